"""Measured leakage: all of τ-bench airline through the real worker (Presidio NER on), every downstream table
searched for every PII value of the customer database; and the domain tokens that must survive."""
import uuid

import orjson
import pytest

from infra.kafka import broker
from lake.readers import read_table
from privacy.leakage import GroundTruth, LeakScanner, domain_tokens, strings_of, survival
from schemas.tables import BRONZE_DEADLETTER, BRONZE_EVENTS, SILVER_EPISODES, SILVER_STEPS
from streams.producer import produce
from streams.recompute import check_parity
from streams.sources.tau_bench import load_trajectories, replay_events
from tests.conftest import TAU, WorkerProcess

pytestmark = pytest.mark.integration
DOWNSTREAM = (BRONZE_EVENTS, BRONZE_DEADLETTER, SILVER_STEPS, SILVER_EPISODES)


@pytest.fixture(scope="module")
def scrubbed_lake(kafka, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("leak-lake")
    tag = uuid.uuid4().hex[:6]
    s = kafka.model_copy(update={"topic_prefix": f"p{tag}.", "worker_id": f"w{tag}", "lake_root": tmp / "lake",
                                 "state_dir": tmp / "state"})
    broker.ensure_topics(s)
    records = load_trajectories(TAU / "gpt-4o-airline.json")
    events = list(replay_events(records))
    produce(s, events)
    w = WorkerProcess(s, tmp / "worker.log").start()  # NER on: the production configuration
    try:
        w.wait_for(lambda: read_table(s, BRONZE_EVENTS, columns=["event_id"]).num_rows >= len(events)
                   and read_table(s, SILVER_EPISODES, columns=["episode_id"]).num_rows >= len(records), 600,
                   message="all of τ-bench in bronze and silver")
        w.wait_for(lambda: check_parity(s).ok, 120, message="silver to settle")
    finally:
        w.stop()
    return s, events


def _texts(settings):
    for spec in DOWNSTREAM:
        for row in read_table(settings, spec).to_pylist():
            yield from strings_of(row)


def test_no_pii_of_the_customer_database_reaches_any_downstream_table(scrubbed_lake):
    s, events = scrubbed_lake
    scanner = LeakScanner(GroundTruth.load(TAU / "airline-users.json"))
    before = scanner.scan(orjson.dumps(e.event).decode() for e in events)
    assert before.total > 100  # the source really is full of PII: the scan can see it
    leaks = scanner.scan(_texts(s))
    assert leaks.total == 0, f"leaked {leaks.found}:\n" + "\n".join(leaks.examples)


def test_domain_tokens_survive_scrubbing(scrubbed_lake):
    s, events = scrubbed_lake
    kept = survival(domain_tokens(orjson.dumps(e.event).decode() for e in events), domain_tokens(_texts(s)))
    for kind, (survived, total) in kept.items():
        assert total > 0 and survived / total >= 0.98, f"{kind}: only {survived} of {total} survived"
