"""The collector's aiohttp shell: /v1/events, /v1/traces (OTLP/HTTP), health, readiness, CORS and the tracker files."""
from __future__ import annotations

import asyncio
import logging
import math
import time
from pathlib import Path
from typing import Any

import aiohttp_cors
import orjson
from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from schemas.contract import ContractError
from schemas.settings import Settings
from streams.collector import otlp
from streams.collector.core import (Accepted, BatchError, Bucket, Limits, app_for_key, check_batch,
                                    collector_dead_letter, decode_batch, presented_key, take)
from streams.ingest import DeadLetter

log = logging.getLogger("trajlake.collector")
STATIC = Path(__file__).parent / "static"
SEND_TIMEOUT_S = 15.0

SETTINGS = web.AppKey("settings", Settings)
PRODUCER = web.AppKey("producer", AIOKafkaProducer)
BUCKETS = web.AppKey("buckets", dict)
STATS = web.AppKey("stats", dict)


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json", headers=headers)


def _error(status: int, reason: str, detail: str, headers: dict[str, str] | None = None) -> web.Response:
    return _json({"error": reason, "detail": detail}, status, headers)


class Refused(Exception):
    """A request refused before anything is written."""

    def __init__(self, response: web.Response):
        self.response = response


async def _admit(request: web.Request) -> str:
    """Origin, write key and body size; returns the key's app. Raises Refused with the answer otherwise."""
    s = request.app[SETTINGS]
    origin = request.headers.get("Origin")
    # simple (text/plain) requests reach us without a preflight, so CORS headers alone would not stop a
    # disallowed page from writing: the collector refuses it itself
    if origin is not None and origin not in s.collector_cors_origins and origin != f"{request.scheme}://{request.host}":
        raise Refused(_error(403, "origin_not_allowed", f"origin {origin!r} is not in TRAJLAKE_COLLECTOR_CORS_ORIGINS"))
    key = presented_key(request.headers, request.query)
    app = app_for_key(key, s.collector_write_keys)
    if app is None:
        reason = "missing_write_key" if not key else "invalid_write_key"
        raise Refused(_error(401, reason, "send the app's write key as 'Authorization: Bearer <key>', "
                                          "'X-Trajlake-Key: <key>' or '?key=<key>'",
                             {"WWW-Authenticate": 'Bearer realm="trajlake"'}))
    limit = _body_limit(request)
    if request.content_length is not None and request.content_length > limit:
        raise Refused(_error(413, "body_too_large", f"the body is {request.content_length} bytes; "
                                                    f"the limit is {limit}"))
    return app


def _body_limit(request: web.Request) -> int:
    s = request.app[SETTINGS]
    return s.collector_max_otlp_body_bytes if request.path == "/v1/traces" else s.collector_max_body_bytes


def _rate(request: web.Request, app: str, n: int) -> None:
    s = request.app[SETTINGS]
    buckets: dict[str, Bucket] = request.app[BUCKETS]
    bucket, wait = take(buckets.get(app), n, time.monotonic(), s.collector_rate_per_second, s.collector_rate_burst)
    buckets[app] = bucket
    if wait > 0:
        if math.isinf(wait):
            raise Refused(_error(413, "batch_too_large", f"{n} events exceed the rate burst of "
                                                         f"{s.collector_rate_burst}; send smaller batches"))
        raise Refused(_error(429, "rate_limited", f"over {s.collector_rate_per_second:g} events/s for this key; "
                                                  f"retry after {wait:.2f}s",
                             {"Retry-After": str(max(1, math.ceil(wait)))}))


async def _body(request: web.Request) -> bytes:
    limit = _body_limit(request)
    try:
        body = await request.read()  # bounded by client_max_size, the larger of the two limits
    except web.HTTPRequestEntityTooLarge:
        body = None
    if body is None or len(body) > limit:  # a chunked or compressed body has no length to check up front
        raise Refused(_error(413, "body_too_large", f"the body exceeds {limit} bytes"))
    return body


async def _produce(request: web.Request, accepted: list[Accepted], dead: list[DeadLetter]) -> None:
    """Send, then wait for the broker's acks (acks=all): an accepted event is durable when we answer."""
    s = request.app[SETTINGS]
    producer = request.app[PRODUCER]
    futures = [await producer.send(s.topic(f"{a.family}.raw"), a.value, key=a.key) for a in accepted]
    futures += [await producer.send(s.topic("deadletter"), d.to_json(), key=d.original_key) for d in dead]
    if futures:
        await asyncio.wait_for(asyncio.gather(*futures), SEND_TIMEOUT_S)


async def events(request: web.Request) -> web.Response:
    """POST /v1/events: a batch of contract events → per-event accept/reject."""
    s = request.app[SETTINGS]
    try:
        app = await _admit(request)
        body = await _body(request)
        limits = Limits(s.collector_max_event_bytes, s.collector_max_batch_events)
        items = decode_batch(body, app, limits)
        if isinstance(items, BatchError):
            if items.dead is not None:
                _rate(request, app, 1)
                await _produce(request, [], [items.dead])
            return _error(items.status, items.reason, items.detail)
        _rate(request, app, max(1, len(items)))
        checked = check_batch(items, app, limits)
        await _produce(request, checked.accepted, [r.dead for r in checked.rejected])
    except Refused as r:
        return r.response
    except (asyncio.TimeoutError, KafkaError) as exc:  # the broker: the client retries (event_id dedups)
        log.warning("produce failed: %r", exc)
        return _error(503, "broker_unavailable", "events could not be stored; retry later", {"Retry-After": "1"})
    stats = request.app[STATS]
    stats["accepted"] += len(checked.accepted)
    stats["rejected"] += len(checked.rejected)
    return _json({"accepted": len(checked.accepted), "rejected": len(checked.rejected), "results": checked.results()})


async def traces(request: web.Request) -> web.Response:
    """POST /v1/traces: OTLP/HTTP (protobuf or JSON) GenAI spans → agent events."""
    s = request.app[SETTINGS]
    try:
        app = await _admit(request)
        body = await _body(request)
        ctype = request.headers.get("Content-Type", "application/x-protobuf").split(";")[0].strip()
        decoded = otlp.decode_request(body, ctype)
        if isinstance(decoded, ContractError):
            dead = collector_dead_letter(app, decoded, body, None, None, "/v1/traces")
            _rate(request, app, 1)
            await _produce(request, [], [dead])
            return _error(400, decoded.reason.value, decoded.detail)
        mapped = otlp.map_request(decoded, app, s.otlp_default_prompt_variant, s.otlp_default_user_id)
        _rate(request, app, max(1, len(mapped.events)))
        checked = check_batch(mapped.events, app, Limits(s.collector_max_event_bytes, 10**9), "/v1/traces")
        await _produce(request, checked.accepted, [r.dead for r in checked.rejected])
    except Refused as r:
        return r.response
    except (asyncio.TimeoutError, KafkaError) as exc:
        log.warning("produce failed: %r", exc)
        return _error(503, "broker_unavailable", "spans could not be stored; retry later", {"Retry-After": "1"})
    rejected = len(checked.rejected)
    request.app[STATS]["accepted"] += len(checked.accepted)
    request.app[STATS]["rejected"] += rejected
    message = "; ".join(f"{r.reason}: {r.detail}" for r in checked.rejected[:3])
    return otlp.response(rejected, message, ctype)


async def health(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return _json({"status": "ok", **request.app[STATS]})


async def ready(request: web.Request) -> web.Response:
    """Readiness: the broker answers a metadata request now."""
    try:
        await asyncio.wait_for(request.app[PRODUCER].client.fetch_all_metadata(), 3.0)
    except Exception as exc:  # any failure means: do not route traffic here
        return _json({"status": "unavailable", "detail": f"Kafka at {request.app[SETTINGS].bootstrap}: {exc!r}"}, 503)
    return _json({"status": "ready"})


def _static(name: str, content_type: str):
    data = (STATIC / name).read_bytes()

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=data, content_type=content_type, headers={"Cache-Control": "max-age=300"})
    return handler


def build_app(settings: Settings, producer: AIOKafkaProducer | None = None) -> web.Application:
    """The collector as an aiohttp Application (the producer starts and stops with it)."""
    app = web.Application(client_max_size=max(settings.collector_max_body_bytes, settings.collector_max_otlp_body_bytes))
    app[SETTINGS] = settings
    app[BUCKETS] = {}
    app[STATS] = {"accepted": 0, "rejected": 0}

    async def kafka(app: web.Application):
        p = producer or AIOKafkaProducer(
            bootstrap_servers=settings.bootstrap, acks="all", enable_idempotence=True, linger_ms=5,
            max_batch_size=256 * 1024, max_request_size=4 * 1024 * 1024, client_id=f"{settings.worker_id}-collector")
        await p.start()
        app[PRODUCER] = p
        yield
        await p.stop()

    app.cleanup_ctx.append(kafka)
    cors = aiohttp_cors.setup(app, defaults={
        origin: aiohttp_cors.ResourceOptions(allow_credentials=False, allow_headers=(
            "Content-Type", "Authorization", "X-Trajlake-Key"), max_age=3600)
        for origin in settings.collector_cors_origins})
    for path, handler in (("/v1/events", events), ("/v1/traces", traces)):
        cors.add(app.router.add_post(path, handler))
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/tracker.js", _static("tracker.js", "text/javascript"))
    app.router.add_get("/demo", _static("demo.html", "text/html"))
    return app


def serve(settings: Settings, on_ready=None) -> None:
    """Run the collector until interrupted."""
    web.run_app(build_app(settings), host=settings.collector_host, port=settings.collector_port,
                print=on_ready, access_log=None, handle_signals=True)
