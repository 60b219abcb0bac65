"""The scrub policy as data: which structured fields are PII, which free-text patterns are, and what must survive."""
from __future__ import annotations

import re

# structured fields by (lower-cased) key name → placeholder label. Matched anywhere in a JSON body.
FIELD_LABELS: dict[str, str] = {
    "first_name": "PERSON", "last_name": "PERSON", "full_name": "PERSON", "middle_name": "PERSON",
    "firstname": "PERSON", "lastname": "PERSON", "passenger_name": "PERSON", "customer_name": "PERSON",
    "email": "EMAIL", "email_address": "EMAIL",
    "phone": "PHONE", "phone_number": "PHONE", "mobile": "PHONE",
    "address": "ADDRESS", "address1": "ADDRESS", "address2": "ADDRESS", "street": "ADDRESS", "street_address": "ADDRESS",
    "zip": "ZIP", "zipcode": "ZIP", "zip_code": "ZIP", "postal_code": "ZIP", "postcode": "ZIP",
    "dob": "DOB", "date_of_birth": "DOB", "birthdate": "DOB", "birthday": "DOB",
    "card_number": "CARD", "last_four": "CARD", "cvv": "CARD", "cvc": "CARD", "iban": "IBAN",
    "passport": "PASSPORT", "passport_number": "PASSPORT", "ssn": "SSN", "password": "SECRET",
    "api_key": "SECRET", "token": "SECRET", "secret": "SECRET",
}
# identifiers and enums of the contract and of tool calls: never personal, passed through as they are
STRUCTURAL_KEYS = {"tool", "call_id", "tool_call_id", "id", "type", "role", "model", "status", "kind", "surface",
                   "channel", "context_mode", "rating", "source", "task_id", "flight_number", "reservation_id",
                   "payment_id", "origin", "destination", "cabin", "flight_type", "function"}
# an identifier-shaped value that embeds personal data is not structural: an agent that builds a payment id from the
# card's last four digits ("credit_card_7334", seen in τ-bench) must not carry them past the scrubber
EMBEDDED_PII = re.compile(r"(?i)card\D{0,3}\d{4}$")
# fields whose value is an identifier that must still join: HMAC pseudonym instead of a placeholder
PSEUDONYM_FIELDS: dict[str, str] = {"user_id": "u", "customer_id": "u", "account_id": "acct"}
# dict-valued keys that are PII as a whole (every leaf below them is redacted with this label)
CONTAINER_LABELS: dict[str, str] = {"name": "PERSON", "address": "ADDRESS", "passengers": "PERSON",
                                    "saved_passengers": "PERSON", "payment_methods": "CARD"}
# leaves under a PII container that are not PII and must survive (joins, analytics)
CONTAINER_KEEP = {"city", "country", "state", "province", "source", "id", "payment_id", "amount", "brand"}

# ---- street addresses in free text ------------------------------------------------------------------------------
STREET_SUFFIXES = ("Street", "St", "Avenue", "Ave", "Road", "Rd", "Lane", "Ln", "Drive", "Dr", "Boulevard", "Blvd",
                   "Court", "Ct", "Way", "Place", "Pl", "Circle", "Cir", "Trail", "Trl", "Parkway", "Pkwy", "Terrace",
                   "Highway", "Hwy", "Square", "Sq", "Loop", "Path", "Row", "Alley", "Plaza")
# In any case (privacy-6) an address has the same shape, but its name words are no longer marked by capitals, so a
# number, ordinary words and a suffix-like word would pass for one: "2 hours each way", "a 20 minute drive", "3 bags
# on the way", "a 5 star place". None of these words names a street in lower case; a capitalized street that
# uses one ("12 The Mall Road") is still caught by the capitalized pattern, which has no such list.
ADDRESS_NOT_NAME_WORDS = frozenset("""
    a an the this that these those each every either neither any all both some no other another same such own
    per one two three four five six seven eight nine ten twice once half dozen hundred thousand more most many few
    several extra additional total
    to of in on at by for from with without into onto upon out off over under up down via along across through
    toward towards around about after before between behind near past than as like
    and or but nor so yet if then
    i me my mine you your he him his she her we us our they them their it its
    is are was were be been being am do does did have has had will would can could should may might must
    take takes took taking make makes made
    pm sec secs second seconds min mins minute minutes hr hrs hour hours day days night nights week weeks weekend
    weekends month months year years yr yrs time times
    mile miles mi km kilometer kilometers kilometre kilometres meter meters metre metres foot feet ft yard yards
    block blocks lane lanes way ways star stars gb tb mb
    dollar dollars usd cent cents percent point points lb lbs kg pound pounds
    bag bags suitcase suitcases luggage passenger passengers traveler travelers traveller travellers adult adults
    child children kid kids infant infants person people seat seats ticket tickets flight flights leg legs segment
    segments stop stops stopover stopovers layover layovers connection connections reservation reservations
    booking bookings trip trips item items piece pieces exit aisle window middle food parking
""".split())
# "Row" is caught only capitalized: in this domain the lower-case word is a seat row ("2 exit row seats")
_ANY_CASE_SUFFIXES = "|".join(s for s in sorted(STREET_SUFFIXES, key=len, reverse=True) if s != "Row")
_NAME_WORD = (r"(?!(?:" + "|".join(sorted(ADDRESS_NOT_NAME_WORDS, key=len, reverse=True)) + r")\b)"
              r"(?:[a-z][a-z'-]*|(?:st|mt)\.|\d{1,3}(?:st|nd|rd|th))")  # a name, "st."/"mt.", an ordinal ("5th")
# The house number stands alone: not a price ("$150"), part of an id ("HAT123"), nor the tail of a time, date,
# decimal or phone number ("3:30", "05-20", "1.5"). That is checked behind its first digit, not before it: a pattern
# that starts with a digit lets re skip ahead to the next digit, and one that starts with a look-behind is tried at
# every character (2.5x the time over τ-bench's texts). Words are joined by spaces or tabs only: a number ending
# one line is no house number of the next ("Total: 247\n\nThis way"). Runs of spaces are matched possessively
# (`[ \t]++`): a unit written "apt" + n spaces + "!" was tried in n + 1 splits between two optional runs, n² steps
# for the whole text (a 64 KB message took ~2 minutes of a scrub process; found in review).
ANY_CASE_ADDRESS = (r"\d(?<![\w$£€¥+]\d)(?<!\d[-.,:/]\d)\d{0,5}[ \t]++"
                    r"(?:(?:" + _NAME_WORD + r"[ \t]++){1,4}(?:" + _ANY_CASE_SUFFIXES + r")\b\.?"
                    # a street without a suffix: 25 of τ-bench's 500 customers live at "<number> Broadway"; not
                    # where the word is the theatre district ("2 broadway tickets")
                    r"|broadway\b(?![ \t]++(?:show|musical|play|ticket|production|star|theat(?:er|re))s?\b))"
                    r"(?:,?[ \t]++(?:(?:suite|ste|apt|apartment|unit)\b\.?(?:[ \t]*+#)?|#)[ \t]*+(?:\d[\w-]*|[a-z]\d*\b))?")

# free-text recognizers Presidio lacks or gets wrong: (label, pattern)
TEXT_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("EMAIL", re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")),
    ("ADDRESS", re.compile(
        r"\b\d{1,6}\s+(?:[A-Z][\w'-]*\s+){1,4}(?:" + "|".join(STREET_SUFFIXES) + r")\b\.?"
        r"(?:,?\s+(?:Suite|Ste|Apt|Apartment|Unit|#)\s*\w+)?")),
    # the same in any case (privacy-6): "i live at 123 main street", "42 OAK AVE APT 5"
    ("ADDRESS", re.compile(ANY_CASE_ADDRESS, re.IGNORECASE)),
    # a unit alone; in any case since privacy-6 ("suite 217")
    ("ADDRESS", re.compile(r"\b(?:Suite|Apt|Apartment|Unit)\s+\d{1,5}\b", re.IGNORECASE)),
    # five digits after a street address and up to four words (its city and state) are its zip code (privacy-6);
    # the city and state stay, as they do in a structured address
    ("ZIP", re.compile(ANY_CASE_ADDRESS + r",?[ \t]++(?:[a-z][a-z'.-]*,?[ \t]++){0,4}(\d{5}(?:-\d{4})?)\b",
                       re.IGNORECASE)),
    ("DOB", re.compile(r"(?i)(?:born|birth(?:day|date)?|dob|date of birth)\D{0,25}"
                       r"(\d{4}-\d{2}-\d{2}|\d{1,2}/\d{1,2}/\d{2,4}|[A-Z][a-z]+ \d{1,2},? \d{4})")),
    ("CARD", re.compile(r"(?i)(?:card|visa|mastercard|amex|ending(?: in| with)?|ends(?: in| with)|"
                        r"last (?:four|4)(?: digits)?|last digits)\D{0,20}(\d{4})\b")),
    # a zip code after the words that name one (privacy-5): five digits alone are too often an amount or an id
    ("ZIP", re.compile(r"(?i)\b(?:zip|postal)(?:[ _-]?code)?\D{0,15}(\d{5}(?:-\d{4})?)\b")),
    ("CARD", re.compile(r"\b(?:\d[ -]?){13,19}\b")),
    ("PHONE", re.compile(r"(?<![\w-])(?:\+?1[ .-]?)?\(?\d{3}\)?[ .-]\d{3}[ .-]\d{4}\b")),
    # an international number (a + and 8-15 digits): Presidio's phone recognizer scores one 0.4, under the bar,
    # unless a context word is near, and "call" does not count (a stop word)
    ("PHONE", re.compile(r"(?<![\w+])\+\d(?:[ .()-]{0,2}\d){7,14}\b")),
    ("SECRET", re.compile(r"\b(?:sk-(?:ant-|proj-)?[A-Za-z0-9_-]{20,}|sk_(?:live|test)_[A-Za-z0-9]{16,}|AKIA[0-9A-Z]{16}|"
                          r"gh[pousr]_[A-Za-z0-9]{30,}|xox[abp]-[A-Za-z0-9-]{10,}|eyJ[\w-]{8,}\.[\w-]{8,}\.[\w-]{8,})\b")),
    ("SECRET", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----")),
    ("SECRET", re.compile(r"https://hooks\.slack\.com/services/[\w/]+")),
    ("SECRET", re.compile(r"(?<=://)[^/\s:@]+:[^/\s@]+(?=@)")),
    ("IBAN", re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){3,7}(?: ?[A-Z0-9]{1,3})?\b")),
    # a full name right after a word that introduces a person: spaCy's small model misses "User Lucas Brown
    # (user ID: …)" in τ-bench escalation summaries, and in the stream the escalation can be scrubbed before
    # the session's profile lookup has taught the dictionary that name (they arrive on different topics)
    ("PERSON", re.compile(r"\b(?:[Uu]ser|[Cc]ustomer|[Pp]assenger|[Tt]raveler|[Cc]lient|[Mm]ember|[Nn]ame is|"
                          r"[Nn]amed|[Mm]rs?\.?|[Mm]s\.?|[Dd]r\.?|I'm|I am|[Tt]his is)\s+"
                          r"([A-Z][a-z'-]+(?:\s+[A-Z][a-z'-]+){1,2})\b")),
    # the same after "my name is" in lower case (privacy-5): NER sees no name without capitals, and a chat
    # message often has none ("hi, my name is mia li"); the words after it are taken as the name
    ("PERSON", re.compile(r"(?i:\bmy name is|\bmy name's)\s+([a-z][a-z'-]+(?:\s+[a-z][a-z'-]+)?)\b")),
]

# Presidio NER / pattern entities we act on, mapped to our labels. LOCATION is left out on purpose:
# cities and airports are not personal and are needed for training; street addresses have a pattern above.
PRESIDIO_LABELS = {"PERSON": "PERSON", "EMAIL_ADDRESS": "EMAIL", "PHONE_NUMBER": "PHONE", "CREDIT_CARD": "CARD",
                   "US_SSN": "SSN", "IBAN_CODE": "IBAN", "US_PASSPORT": "PASSPORT", "IP_ADDRESS": "IP"}
PRESIDIO_MIN_SCORE = 0.5

# domain tokens that must survive scrubbing even when a recognizer flags them
ALLOW_PATTERNS = [
    re.compile(r"^[A-Z]{3}$"),              # IATA airport codes (JFK flagged as PERSON)
    re.compile(r"^HAT\d{3}$"),              # flight numbers
    re.compile(r"^[A-Z0-9]{6}$"),           # reservation ids
    re.compile(r"^(?:certificate|credit_card|gift_card|paypal)_\d{5,}$"),  # payment method ids (not a card's last 4)
    re.compile(r"^call_[A-Za-z0-9]+$"),     # tool-call ids
]
ALLOW_WORDS = {"suite", "user", "thank", "thanks", "hi", "hello", "yes", "no", "sure", "please", "economy", "business",
               "basic", "regular",
               # the airline domain's words spaCy takes for a PERSON (privacy-4): "## Modify flight" in every
               # τ-bench system prompt, payment methods and baggage in the agents' Markdown lists
               "modify", "arrival", "gift card", "gift cards", "certificate", "certificates", "travel certificate",
               "visa", "mastercard", "baggage", "checked bag", "checked bags", "user_id"}
# membership tiers that are also surnames ("Thanks, Silver."): allowed only where a tier word follows (privacy-4)
TIER_WORDS = {"gold", "silver"}
TIER_FOLLOWS = re.compile(r"[\s*_]*(?:member|membership|tier|status|level|card|elite|customer)", re.IGNORECASE)
