"""Leak measurement against ground truth: the τ-bench customer database's PII searched in any text, and the
domain tokens (flight numbers, airports, reservation ids) that should survive scrubbing."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import orjson

CARD_WORDS = r"(?:card|visa|mastercard|amex|discover|ending|last four|last 4|digits)"


@dataclass(frozen=True)
class GroundTruth:
    """PII values per kind and the cards' last four digits, from airline-users.json."""

    pii: dict[str, frozenset[str]]
    card_last_four: frozenset[str]

    @classmethod
    def load(cls, users_file: Path) -> "GroundTruth":
        users = orjson.loads(users_file.read_bytes())
        names, emails, dobs, streets = set(), set(), set(), set()
        cards = set()
        for u in users.values():
            people = [u["name"], *u.get("saved_passengers", [])]
            names.update(f"{p['first_name']} {p['last_name']}" for p in people)
            dobs.update(p["dob"] for p in [u, *u.get("saved_passengers", [])] if p.get("dob"))
            emails.add(u["email"])
            streets.add(u["address"]["address1"])
            cards.update(pm["last_four"] for pm in u.get("payment_methods", {}).values() if pm.get("last_four"))
        # the customers' own ids too ("mia_li_3668"): the pipeline pseudonymizes them, so a raw one downstream is
        # an identifier that got past the scrubber
        return cls({"full_name": frozenset(names), "email": frozenset(emails), "dob": frozenset(dobs),
                    "street_address": frozenset(streets), "user_id": frozenset(users)}, frozenset(cards))


@dataclass
class Leaks:
    found: dict[str, set[str]] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.found.values())


# A value counts where it stands as a whole: not inside a longer word, e-mail address or dotted name.
_BEFORE_VALUE = re.compile(r"[\w@.]")
_AFTER_VALUE = re.compile(r"[\w@]")


def _lowered(text: str) -> str:
    """`text` lowercased character by character, so positions still line up with `text` (`str.lower` turns a few
    characters, such as 'İ', into two)."""
    low = text.lower()
    if len(low) == len(text):
        return low
    return "".join(c if len(c.lower()) != 1 else c.lower() for c in text)


class LeakScanner:
    """Every PII value of a ground truth searched in any text in one pass (Aho-Corasick over the lowercased text,
    each match kept only where the value stands as a whole word), and card last-fours next to card words.

    The same findings as one case-insensitive regex alternation of all the values, at ~95x its speed: Python's
    regex engine tried each of the ~2,800 τ-bench values at every position (0.15 MB/s; bench/leak_scan.py).
    Overlapping occurrences of two values are both reported, where a regex would report the first.
    """

    def __init__(self, truth: GroundTruth):
        import ahocorasick

        self.values = ahocorasick.Automaton()
        for kind, values in truth.pii.items():
            for v in values:
                self.values.add_word(v.lower(), (kind, len(v)))
        self.values.make_automaton()
        # "next to card words": within a dozen characters, so ids like gift_card_6847880 followed by an
        # amount that happens to equal someone's last four do not count. Run on the lowercased text: without
        # re.I the engine skips ahead to the card words' first letters.
        self.cards = re.compile(CARD_WORDS + r"[^\n\d]{0,12}(" + "|".join(sorted(truth.card_last_four))
                                + r")(?!\d)") if truth.card_last_four else None

    def scan(self, texts: Iterable[str]) -> Leaks:
        leaks = Leaks()
        values, before, after = self.values, _BEFORE_VALUE.match, _AFTER_VALUE.match
        for text in texts:
            low = _lowered(text)
            if values.kind:  # an automaton with no words cannot iterate
                for end, (kind, n) in values.iter(low):
                    start, stop = end - n + 1, end + 1
                    if (start and before(low, start - 1)) or (stop < len(low) and after(low, stop)):
                        continue
                    leaks.found.setdefault(kind, set()).add(text[start:stop])
                    if len(leaks.examples) < 20:
                        leaks.examples.append(text[max(0, start - 60):stop + 60])
            for m in self.cards.finditer(low) if self.cards else ():
                leaks.found.setdefault("card_last_four", set()).add(m.group(1))
                if len(leaks.examples) < 20:
                    leaks.examples.append(text[max(0, m.start() - 60):m.end() + 20])
        return leaks


DOMAIN_PATTERNS = {
    "flight_number": re.compile(r"\bHAT\d{3}\b"),
    "airport": re.compile(r"(?<=\")(?:[A-Z]{3})(?=\")"),
    "reservation_id": re.compile(r"\b(?=[A-Z0-9]{6}\b)(?=[A-Z0-9]*\d)(?=[A-Z0-9]*[A-Z])[A-Z0-9]{6}\b"),
}


def domain_tokens(texts: Iterable[str]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {k: set() for k in DOMAIN_PATTERNS}
    for t in texts:
        for k, p in DOMAIN_PATTERNS.items():
            out[k].update(p.findall(t))
    return out


def survival(before: dict[str, set[str]], after: dict[str, set[str]]) -> dict[str, tuple[int, int]]:
    """Per kind: (tokens in the source that survive downstream, tokens in the source)."""
    return {k: (len(before[k] & after.get(k, set())), len(before[k])) for k in before}


def strings_of(value: Any) -> Iterable[str]:
    """Every string inside a row value (JSON strings are searched as text, bytes decoded leniently)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, (bytes, bytearray)):
        yield bytes(value).decode("utf-8", "replace")
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings_of(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from strings_of(v)


# ---- detectors that need no ground truth: what an export must never carry, whoever the users are ---------------
PII_PATTERNS = {
    "email": re.compile(r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
    "phone": re.compile(r"(?<![\w+])(?:\+?1[ .-]?)?\(?\d{3}\)?[ .-]\d{3}[ .-]\d{4}(?!\w)"),
    "us_ssn": re.compile(r"(?<![\d-])\d{3}-\d{2}-\d{4}(?![\d-])"),
    "card_number": re.compile(r"(?<![\w.,-])\d(?:[ -]?\d){12,18}(?![\w.,-])"),
}


def _luhn(number: str) -> bool:
    digits = [int(c) for c in number if c.isdigit()]
    total = sum(d if i % 2 == 0 else (d * 2 - 9 if d * 2 > 9 else d * 2) for i, d in enumerate(reversed(digits)))
    return total % 10 == 0


# Python's regex engine skips ahead fast only to a literal or a character class that starts a pattern; the
# detectors above start with a look-behind, so they would be tried at every position (a few MB/s). The scan finds
# the rare places they can match instead — an '@' with a domain, a run of nine or more digits and separators —
# and runs the detectors there alone.
_AT_DOMAIN = re.compile(r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_DIGIT_RUN = re.compile(r"\d[\d ().-]{7,}\d")
# the same for ASCII text, where \d is [0-9]: the engine tests a character class faster than the Unicode digit
# category (1.8× on digit-dense text)
_DIGIT_RUN_ASCII = re.compile(r"[0-9][0-9 ().-]{7,}[0-9]")


class PatternScanner:
    """Structured PII by pattern (emails, phone numbers, US SSNs, Luhn-valid card numbers), no ground truth
    needed; with a `truth`, also every value of that customer database (the τ-bench check)."""

    def __init__(self, truth: GroundTruth | None = None):
        self.truth = LeakScanner(truth) if truth else None

    def scan(self, texts: Iterable[str]) -> Leaks:
        texts = list(texts)
        leaks = self.truth.scan(texts) if self.truth else Leaks()

        def found(kind: str, m: re.Match, text: str) -> None:
            if kind == "card_number" and not _luhn(m.group(0)):
                return
            leaks.found.setdefault(kind, set()).add(m.group(0))
            if len(leaks.examples) < 20:
                leaks.examples.append(text[max(0, m.start() - 60):m.end() + 20])

        email = PII_PATTERNS["email"]
        for text in texts:
            for at in _AT_DOMAIN.finditer(text):
                # the whole address: the detector over the local part before the '@' and the domain after it
                for m in email.finditer(text, max(0, at.start() - 64), at.end()):
                    found("email", m, text)
            for run in (_DIGIT_RUN_ASCII if text.isascii() else _DIGIT_RUN).finditer(text):
                # pos keeps the look-behind's view of the character before; endpos lets the look-ahead see one after
                lo, hi = max(0, run.start() - 3), min(len(text), run.end() + 1)
                for kind in ("phone", "us_ssn", "card_number"):
                    for m in PII_PATTERNS[kind].finditer(text, lo, hi):
                        found(kind, m, text)
        return leaks
