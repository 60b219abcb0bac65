"""The worker app's own helpers (the agents themselves run against the real broker in test_worker*.py)."""
import asyncio
import logging

import pytest

from streams.app import _log_stage_failure, _put_unless_failed

pytestmark = pytest.mark.unit


def test_a_failed_ingest_stage_is_raised_in_the_agent_and_logged_at_once(caplog):
    async def scenario():
        queue: asyncio.Queue = asyncio.Queue(maxsize=1)
        await queue.put("batch 1")  # full: the stage that drains it has died

        async def dies():
            raise ValueError("the scrub pool died")

        stage = asyncio.ensure_future(dies())
        stage.add_done_callback(_log_stage_failure)
        with pytest.raises(ValueError, match="scrub pool died"):
            await asyncio.wait_for(_put_unless_failed(queue, "batch 2", [stage]), timeout=5)

    with caplog.at_level(logging.ERROR, logger="trajlake.worker"):
        asyncio.run(scenario())
    assert "an ingest stage failed" in caplog.text


def test_a_batch_goes_on_the_queue_while_the_stages_run():
    async def scenario():
        queue: asyncio.Queue = asyncio.Queue(maxsize=1)
        stage = asyncio.ensure_future(asyncio.sleep(10))
        await asyncio.wait_for(_put_unless_failed(queue, "batch", [stage]), timeout=5)
        stage.cancel()
        return queue.get_nowait()

    assert asyncio.run(scenario()) == "batch"
