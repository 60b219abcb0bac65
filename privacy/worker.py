"""The scrubber in a worker process: built once per process, called with batches so the event loop never blocks."""
from __future__ import annotations

from functools import lru_cache
from typing import Any

from privacy import POLICY_VERSION
from privacy.keystore import KeyStore
from privacy.scrub import EventScrubber, SessionDictionary, one_blas_thread
from privacy.tokens import seal
from schemas.settings import Settings

_scrubber: EventScrubber | None = None
_keys: KeyStore | None = None
# a user's token is the same on every row while their key lives: seal once per (key, user)
_seal = lru_cache(maxsize=65_536)(seal)


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when the worker that forked it dies (even by SIGKILL)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the pool's own shutdown still applies
        pass


def init(settings: Settings, use_ner: bool) -> None:
    """Process-pool initializer: die with the parent, one BLAS thread, then load Presidio and spaCy once and open the
    key store."""
    global _scrubber, _keys
    _die_with_parent()
    one_blas_thread()
    _scrubber = EventScrubber(settings.pseudonym_key.get_secret_value().encode(), use_ner=use_ner,
                              deny_terms=settings.scrub_deny_terms)
    _keys = KeyStore(settings.key_store_path, settings.key_cache_seconds)
    if use_ner:
        _scrubber.analyzer  # noqa: B018 — load the model now, not on the first event


def scrub(events: list[dict[str, Any]], contexts: dict[str, SessionDictionary]
          ) -> tuple[list[dict[str, Any] | str], dict[str, SessionDictionary]]:
    """The pool's entry point: `scrub_batch` with this process's scrubber and key store."""
    assert _scrubber is not None and _keys is not None, "privacy.worker.init was not called"
    return scrub_batch(_scrubber, _keys, events, contexts)


def scrub_batch(scrubber: EventScrubber, keys: KeyStore, events: list[dict[str, Any]],
                contexts: dict[str, SessionDictionary]
                ) -> tuple[list[dict[str, Any] | str], dict[str, SessionDictionary]]:
    """Scrub a batch in order; a failing event yields its error text instead of stopping the batch.

    Each result is {"event": the scrubbed event, "policy_version", "user_ref": the raw user id sealed with the
    user's own key}, the fields of a tl.events.clean record that the scrubber alone can fill in.
    """
    out: list[dict[str, Any] | str] = []
    for e in events:
        ctx = contexts.setdefault(e["session_id"], SessionDictionary())
        try:
            scrubber.learn_event(e, ctx)
        except Exception as exc:  # noqa: BLE001 — reported as a dead letter, not raised
            out.append(f"{type(exc).__name__}: {exc}")
            continue
        out.append(e)
    learnt = [e for e in out if isinstance(e, dict)]
    try:
        scrubber.prepare_ner(learnt, contexts)
    except Exception:  # noqa: BLE001 — batching is an optimisation: each event then runs NER on its own below
        pass
    scrubbed: list[tuple[int, dict[str, Any], str]] = []  # (position, clean event, raw user id)
    for i, e in enumerate(out):
        if isinstance(e, dict):
            try:
                scrubbed.append((i, scrubber.scrub_event(e, contexts[e["session_id"]]), e["user_id"]))
            except Exception as exc:  # noqa: BLE001
                out[i] = f"{type(exc).__name__}: {exc}"
    try:  # the batch's new users' keys in one transaction (KeyStore.keys)
        user_keys = keys.keys(c["user_id"] for _, c, _ in scrubbed if isinstance(c.get("user_id"), str))
    except Exception:  # noqa: BLE001 — then user by user below, so only the events whose key fails are lost
        user_keys = {}
    for i, clean, user_id in scrubbed:
        try:
            pseudonym = clean["user_id"]
            key = user_keys.get(pseudonym) or keys.key(pseudonym)
            out[i] = {"event": clean, "policy_version": POLICY_VERSION, "user_ref": _seal(key, pseudonym, user_id)}
        except Exception as exc:  # noqa: BLE001
            out[i] = f"{type(exc).__name__}: {exc}"
    return out, contexts
