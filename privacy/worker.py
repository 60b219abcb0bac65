"""The scrubber in a worker process: built once per process, called with batches so the event loop never blocks."""
from __future__ import annotations

from typing import Any

from privacy.scrub import EventScrubber, SessionDictionary

_scrubber: EventScrubber | None = None


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when the worker that forked it dies (even by SIGKILL)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the pool's own shutdown still applies
        pass


def init(key: bytes, use_ner: bool, deny_terms: list[str]) -> None:
    """Process-pool initializer: die with the parent, then load Presidio and spaCy once."""
    global _scrubber
    _die_with_parent()
    _scrubber = EventScrubber(key, use_ner=use_ner, deny_terms=deny_terms)
    if use_ner:
        _scrubber.analyzer  # noqa: B018 — load the model now, not on the first event


def scrub(events: list[dict[str, Any]], contexts: dict[str, SessionDictionary]
          ) -> tuple[list[dict[str, Any] | str], dict[str, SessionDictionary]]:
    """Scrub a batch in order; a failing event yields its error text instead of stopping the batch."""
    assert _scrubber is not None, "privacy.worker.init was not called"
    out: list[dict[str, Any] | str] = []
    for e in events:
        ctx = contexts.setdefault(e["session_id"], SessionDictionary())
        try:
            _scrubber.learn_event(e, ctx)
        except Exception as exc:  # noqa: BLE001 — reported as a dead letter, not raised
            out.append(f"{type(exc).__name__}: {exc}")
            continue
        out.append(e)
    for i, e in enumerate(out):
        if isinstance(e, dict):
            try:
                out[i] = _scrubber.scrub_event(e, contexts[e["session_id"]])
            except Exception as exc:  # noqa: BLE001
                out[i] = f"{type(exc).__name__}: {exc}"
    return out, contexts
