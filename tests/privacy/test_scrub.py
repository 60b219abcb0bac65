"""The scrub policy: structured PII by rule, free text by dictionary, patterns and Presidio; pseudonyms that join."""
import json

import pytest

from privacy.pseudonyms import pseudonym
from privacy.scrub import EventScrubber, SessionDictionary
from schemas.contract import CONTRACT_DIR

KEY = b"test-key"


def event(event_type: str, body: dict, **kw) -> dict:
    e = json.loads((CONTRACT_DIR / "examples/valid/user_message.json").read_text())
    e.update(event_type=event_type, body=body, **kw)
    return e


@pytest.fixture(scope="module")
def patterns_only():
    return EventScrubber(KEY, use_ner=False)


@pytest.fixture(scope="module")
def presidio():
    return EventScrubber(KEY, use_ner=True)


@pytest.mark.unit
def test_pseudonyms_are_stable_keyed_and_kinded():
    assert pseudonym(KEY, "u", "mia_li_3668") == pseudonym(KEY, "u", "mia_li_3668")
    assert pseudonym(KEY, "u", "mia_li_3668") != pseudonym(b"other", "u", "mia_li_3668")
    assert pseudonym(KEY, "u", "x").startswith("u_")


@pytest.mark.unit
def test_structured_fields_are_redacted_and_reused_in_free_text(patterns_only):
    profile = {"name": {"first_name": "Mia", "last_name": "Li"}, "email": "mia.li3818@example.com",
               "dob": "1990-04-05", "address": {"address1": "975 Sunset Drive", "city": "Austin", "zip": "78750"},
               "user_id": "mia_li_3668"}
    tool = event("tool_call", {"tool": "get_user_details", "call_id": "call_1", "arguments": {"user_id": "mia_li_3668"},
                               "result": profile, "status": "ok"}, schema="agent/1")
    later = event("user_message", {"text": "I'm Mia Li (mia_li_3668), born 1990-04-05; mail mia.li3818@example.com"})
    ctxs: dict[str, SessionDictionary] = {}
    out_tool, out_msg = patterns_only.scrub_events([tool, later], ctxs)
    blob = json.dumps([out_tool, out_msg])
    for value in ("Mia", "mia_li_3668", "mia.li3818@example.com", "1990-04-05", "975 Sunset Drive", "78750"):
        assert value not in blob
    uid = pseudonym(KEY, "u", "mia_li_3668")
    assert out_tool["user_id"] == out_msg["user_id"] == pseudonym(KEY, "u", later["user_id"])
    assert out_tool["body"]["arguments"]["user_id"] == uid and uid in out_msg["body"]["text"]
    assert out_tool["body"]["result"]["address"]["city"] == "Austin"  # not personal, kept
    assert out_tool["body"]["tool"] == "get_user_details"


@pytest.mark.unit
def test_placeholders_are_consistent_within_a_session(patterns_only):
    ctx = SessionDictionary()
    ctx.learn("Mia Li", "PERSON")
    a = patterns_only.scrub_text("Mia Li called", ctx)
    b = patterns_only.scrub_text("then MIA LI wrote", ctx)
    assert a.split()[0] == b.split()[1] == "<PERSON_1>"


@pytest.mark.unit
def test_a_saved_dictionary_scrubs_as_the_one_it_was_saved_from(patterns_only):
    """The worker saves a session's dictionary as JSON and loads it after a restart: the loaded one gives the same
    placeholders, and numbers new values on from where the saved one stopped."""
    import orjson

    ctx = SessionDictionary()
    ctx.learn("Mia Li", "PERSON")
    ctx.learn("Presidio Found", "PERSON", match=False)
    loaded = SessionDictionary.from_state(orjson.loads(orjson.dumps(ctx.to_state())))
    text = "Mia Li and Omar Ali"
    assert patterns_only.scrub_text(text, loaded) == patterns_only.scrub_text(text, ctx) == "<PERSON_1> and Omar Ali"
    assert loaded.learn("Omar Ali", "PERSON") == ctx.learn("Omar Ali", "PERSON") == "<PERSON_3>"


@pytest.mark.unit
def test_a_dictionary_counts_its_changes_and_only_new_values_count():
    """The worker re-saves a session's dictionary only when `changes` moved: a value seen again is not a change,
    a recognizer finding promoted to a structured value is."""
    ctx = SessionDictionary()
    ctx.learn("Mia Li", "PERSON")
    ctx.learn("Omar", "PERSON", match=False)
    assert ctx.changes == 2
    ctx.learn("mia li", "PERSON")
    ctx.learn("Omar", "PERSON", match=False)
    ctx.learn("x", "PERSON")  # too short to be a value
    assert ctx.changes == 2
    ctx.learn("Omar", "PERSON")  # now from a structured field: matched wherever it reappears
    assert ctx.changes == 3 and ctx.values["omar"] == "<PERSON_2>"


@pytest.mark.unit
def test_sessions_not_held_in_memory_are_loaded_then_started_afresh():
    from privacy.scrub import SessionDictionaries

    held, saved = SessionDictionary(), SessionDictionary()
    held.learn("Mia Li", "PERSON")
    saved.learn("Omar Ali", "PERSON")
    lru = SessionDictionaries(capacity=2)
    lru.put({"held": held})
    asked: list[str] = []

    def load(sid: str):
        asked.append(sid)
        return saved if sid == "saved" else None

    out = lru.take(["held", "saved", "new", "saved"], load)
    assert out["held"] is held and out["saved"] is saved and out["new"] == SessionDictionary()
    assert asked == ["saved", "new"]  # memory first, each session once


@pytest.mark.unit
@pytest.mark.parametrize("text,leak", [
    ("my card ending in 4421 please", "4421"),
    ("I live at 975 Sunset Drive, Suite 217", "975 Sunset Drive"),
    ("born on 1985-03-12 in Ohio", "1985-03-12"),
    ("key sk-proj-abcdefghijklmnopqrstuvwxyz123456", "sk-proj-abcdefghij"),
    ("AWS AKIAABCDEFGHIJKLMNOP here", "AKIAABCDEFGHIJKLMNOP"),
    ("db at postgres://admin:hunter2@db.local/x", "hunter2"),
    ("call me at (512) 555-0199", "555-0199"),
    ("Call Mr. Juan Perez on +44 20 7946 0958", "7946 0958"),
    ("reach her at +49 (0)30 12345678 tomorrow", "12345678"),
    ("my number is +33 1 23 45 67 89", "45 67 89"),
])
def test_patterns_catch_what_presidio_misses(patterns_only, text, leak):
    assert leak not in patterns_only.scrub_text(text, SessionDictionary())


@pytest.mark.unit
@pytest.mark.parametrize("text", [
    "Flight HAT136 from JFK to SEA on 2024-05-20",
    "Reservation OI5L9G was paid with certificate_7504069",
    "The fare went up by +15 USD, +3 bags",
])
def test_domain_tokens_survive(patterns_only, text):
    assert patterns_only.scrub_text(text, SessionDictionary()) == text


@pytest.mark.component
def test_presidio_finds_names_no_rule_knew(presidio):
    out = presidio.scrub_text("Hello, this is Katherine Johnson speaking about flight HAT136 from JFK.",
                              SessionDictionary())
    assert "Katherine" not in out and "Johnson" not in out
    assert "HAT136" in out and "JFK" in out


@pytest.mark.component
def test_a_false_positive_does_not_spread_through_the_session(presidio):
    ctx = SessionDictionary()
    presidio.scrub_text("Katherine asked.", ctx)
    assert "katherine" not in ctx.values  # recognizer findings are numbered, never matched session-wide


@pytest.mark.component
def test_the_tau_bench_policy_keeps_its_headings(presidio):
    """spaCy tags "Modify" in "## Modify flight" as a PERSON; every τ-bench system prompt has that heading."""
    from tests.conftest import TAU

    system = json.loads((TAU / "gpt-4o-airline.json").read_text())[0]["traj"][0]["content"]
    assert "## Modify flight" in system
    out = presidio.scrub_text(system, SessionDictionary())
    assert "## Modify flight" in out and "<PERSON" not in out


@pytest.mark.unit
def test_a_name_finding_is_trimmed_to_its_letters_and_digits_and_allowed_only_as_found():
    from presidio_analyzer import RecognizerResult

    from privacy.scrub import _findings

    text = "Passengers:\n- Ivan Smith\n- *Mia Li*\nThanks, Silver.\nJose\u0301 wants to Modify it"
    at = text.index
    results = [RecognizerResult("PERSON", at("Ivan"), at("- *Mia"), 0.85),  # "Ivan Smith\n"
               RecognizerResult("PERSON", at("*Mia"), at("\nThanks"), 0.85),  # "*Mia Li*"
               RecognizerResult("PERSON", at("Silver"), at("\nJose"), 0.85),  # "Silver.": a name, not the tier
               RecognizerResult("PERSON", at("Jose"), at(" wants"), 0.85),  # "José", its accent a combining mark
               RecognizerResult("PERSON", at("Modify"), at(" it"), 0.85),  # an allowed word as found
               RecognizerResult("PERSON", 0, 1, 0.3),  # under the bar
               RecognizerResult("PERSON", at("\n- *Mia"), at("\n- *Mia") + 4, 0.85)]  # punctuation alone
    assert [text[s:e] for s, e, _ in _findings(results, text)] == ["Ivan Smith", "Mia Li", "Silver", "Jose\u0301"]
    scrubber = EventScrubber(KEY, use_ner=True)
    scrubber._ner = lambda t: _findings(results, t)  # spaCy's findings, as above, without loading spaCy
    assert scrubber.scrub_text(text, SessionDictionary()) == (
        "Passengers:\n- <PERSON_1>\n- *<PERSON_2>*\nThanks, <PERSON_3>.\n<PERSON_4> wants to Modify it")


@pytest.mark.unit
@pytest.mark.parametrize("text,found,kept", [
    ("I'm a Gold member since 2019", "Gold", True),
    ("my silver tier card", "silver", True),
    ("a **Gold** membership", "Gold", True),
    ("Thanks, Silver, see you", "Silver", False),  # a surname: no tier follows
    ("Ms Gold called", "Gold", False),
])
def test_a_tier_that_is_also_a_surname_is_kept_only_before_a_tier_word(text, found, kept):
    from presidio_analyzer import RecognizerResult

    from privacy.scrub import _findings

    at = text.index(found)
    findings = _findings([RecognizerResult("PERSON", at, at + len(found), 0.85)], text)
    assert (findings == ()) is kept


@pytest.mark.unit
def test_an_id_built_from_a_cards_last_four_is_not_structural(patterns_only):
    """GPT-4o in τ-bench calls tools with payment_id "credit_card_7334": the card's last four inside an id."""
    call = event("tool_call", {"tool": "update_reservation_flights", "call_id": "call_2", "status": "ok",
                               "arguments": {"payment_id": "credit_card_7334", "reservation_id": "UM3OG5"}},
                 schema="agent/1")
    real = event("tool_call", {"tool": "book_reservation", "call_id": "call_3", "status": "ok",
                               "arguments": {"payment_id": "credit_card_4421486"}}, schema="agent/1")
    out, kept = patterns_only.scrub_events([call, real], {})
    assert "7334" not in json.dumps(out)
    assert out["body"]["arguments"]["reservation_id"] == "UM3OG5"
    assert kept["body"]["arguments"]["payment_id"] == "credit_card_4421486"  # a real method id still joins


@pytest.mark.unit
def test_a_name_introduced_in_text_is_caught_without_any_dictionary(patterns_only):
    """In the stream an escalation summary can be scrubbed before the profile lookup that names the user."""
    text = "User Lucas Brown (user ID: lucas_brown_4047) needs to change the dates; my name is Ana Maria Silva."
    out = patterns_only.scrub_text(text, SessionDictionary())
    assert "Lucas Brown" not in out and "Ana Maria Silva" not in out and "needs to change" in out


@pytest.mark.component
def test_batched_ner_scrubs_exactly_as_text_by_text(presidio):
    """scrub_events runs NER for the whole batch in one nlp.pipe pass, then scrubs from the cache: same output."""
    from streams.sources.tau_bench import load_trajectories, replay_events
    from tests.conftest import TAU

    events = [e.event for e in replay_events(load_trajectories(TAU / "gpt-4o-airline.json"), limit=3)]
    one_by_one = EventScrubber(KEY, use_ner=True)
    one_by_one._analyzer = presidio.analyzer
    contexts: dict = {}
    for e in events:
        one_by_one.learn_event(e, contexts.setdefault(e["session_id"], SessionDictionary()))
    expected = [one_by_one.scrub_event(e, contexts[e["session_id"]]) for e in events]
    batched = EventScrubber(KEY, use_ner=True)
    batched._analyzer = presidio.analyzer
    calls = []
    batched._ner_uncached = lambda text: calls.append(text) or ()  # any NER outside the batch would show here
    batched._ner.fn = batched._ner_uncached
    assert batched.scrub_events(json.loads(json.dumps(events)), {}) == expected
    assert calls == []


def _corpus(seed: int) -> list[str]:
    """600 distinct texts: the bodies of 12 τ-bench trajectories, then of a seeded synthetic stream."""
    from privacy.leakage import strings_of
    from streams.sources.synthetic import synthetic_events
    from streams.sources.tau_bench import load_trajectories, replay_events
    from tests.conftest import TAU

    tau = [e.event for e in replay_events(load_trajectories(TAU / "gpt-4o-airline.json"), limit=12)]
    texts = [t for e in tau for t in strings_of(e["body"]) if t.strip()]
    texts += [t for e in synthetic_events(3_000, seed=seed) for t in strings_of(e.event.get("body"))
              if isinstance(t, str) and len(t) > 3]
    return list(dict.fromkeys(texts))[:600]


def _findings(analyzer, texts: list[str]) -> list[list[tuple]]:
    """Presidio's findings per text, scores included, over spaCy's batched pipe (as prepare_ner runs it)."""
    from privacy import policy

    return [sorted((r.entity_type, r.start, r.end, round(r.score, 6))
                   for r in analyzer.analyze(text, language="en", entities=list(policy.PRESIDIO_LABELS),
                                             nlp_artifacts=artifacts))
            for text, artifacts in analyzer.nlp_engine.process_batch(texts, language="en", batch_size=64)]


@pytest.mark.component
def test_only_ner_runs_and_presidio_finds_the_same_as_with_the_full_pipeline(presidio):
    """build_analyzer runs spaCy's NER alone, with lowercase text for lemmas. Its findings, scores included, on
    τ-bench and synthetic texts are the same as with en_core_web_sm's whole pipeline (tagger, lemmatizer,
    parser). On texts whose findings need a context word it finds at least as much: 'calling' lemmatizes to the
    stop word 'call', which Presidio drops from the context, while 'calling' itself holds 'call'."""
    from privacy import policy
    from privacy.scrub import LEMMA_COMPONENT, NON_NER_PIPES

    texts = _corpus(seed=11) + [
        "You can reach me by calling 212-555-0143 after six.", "Phones: 415 555 2671 or (415) 555-2672",
        "my passport number is 912803456", "Passports 340020013 and 340020014 were scanned",
        "the cards ending 4111 1111 1111 1111 were declined", "Social security numbers: 078-05-1120",
        "emailed Maria Garcia at maria.garcia@example.com", "his ssn was 219-09-9999, he said",
        "IP addresses 10.0.0.12 and 192.168.1.1 were blocked", "Call Mr. Juan Perez on +44 20 7946 0958"]
    analyzer = presidio.analyzer
    nlp = analyzer.nlp_engine.nlp["en"]
    assert set(nlp.pipe_names) == {"ner", LEMMA_COMPONENT}

    ner_only = _findings(analyzer, texts)
    nlp.disable_pipe(LEMMA_COMPONENT)
    for name in NON_NER_PIPES:
        nlp.enable_pipe(name)
    try:
        full = _findings(analyzer, texts)
    finally:
        for name in NON_NER_PIPES:
            nlp.disable_pipe(name)
        nlp.enable_pipe(LEMMA_COMPONENT)
    assert sum(map(len, ner_only)) > 50  # the texts do hold entities
    assert ner_only[:-10] == full[:-10]
    kept = lambda found: {f[:3]: f[3] for f in found if f[3] >= policy.PRESIDIO_MIN_SCORE}  # noqa: E731
    for lite, whole in zip(ner_only[-10:], full[-10:]):
        assert lite
        assert all(kept(lite).get(span, 0) >= score for span, score in kept(whole).items()), (lite, whole)
    assert ner_only[-10] != full[-10]  # the 'calling' case: boosted to 0.75 here, 0.4 (not kept) before


@pytest.mark.component
def test_ner_multiplies_with_numpy_and_finds_the_same_as_with_blis(presidio):
    """Every layer of the model multiplies with numpy's BLAS, not cython-blis (whose generic kernel is what BLIS
    runs on CPUs it does not know), and the findings, scores included, are the same as with cython-blis."""
    texts = _corpus(seed=12)
    analyzer = presidio.analyzer
    nlp = analyzer.nlp_engine.nlp["en"]
    layers = [node for _, pipe in nlp.components if hasattr(getattr(pipe, "model", None), "walk")
              for node in pipe.model.walk()]
    assert len(layers) > 50 and all(node.ops.use_blis is False for node in layers)

    by_numpy = _findings(analyzer, texts)
    ops = layers[0].ops
    ops.use_blis = True
    try:
        by_blis = _findings(analyzer, texts)
    finally:
        ops.use_blis = False
    assert sum(map(len, by_numpy)) > 50
    assert by_numpy == by_blis


@pytest.mark.unit
def test_a_known_value_sent_as_the_users_id_gets_the_users_pseudonym(patterns_only):
    """An email first seen in a tool result, then sent as the user's id (a tracker with userId: me.email), came
    out as the shared <EMAIL_1>: every such user merged under one id, and erasure could not find them."""
    tool = event("tool_call", {"tool": "lookup", "call_id": "call_1", "arguments": {},
                               "result": {"email": "mia.li3818@example.com"}, "status": "ok"},
                 schema="agent/1", user_id="mia_li_3668")
    later = event("user_message", {"text": "write to mia.li3818@example.com"}, user_id="mia.li3818@example.com")
    _, out = patterns_only.scrub_events([tool, later], {})
    assert out["user_id"] == pseudonym(KEY, "u", "mia.li3818@example.com")
    assert "mia.li3818" not in json.dumps(out)


@pytest.mark.unit
def test_object_keys_and_numeric_ids_are_scrubbed_too(patterns_only):
    """Keys are data (`{"<email>": "vip"}`), and an id field may hold a number: both passed raw."""
    e = event("tool_call", {"tool": "crm", "call_id": "call_1", "status": "ok",
                            "arguments": {"customer_id": 99887766, "account_id": 5551234},
                            "result": {"user_id": 48213, "mia.li3818@example.com": "vip", "source": "mia_li_3668",
                                       "owner": 48213}}, schema="agent/1", user_id="mia_li_3668")
    (out,) = patterns_only.scrub_events([e], {})
    blob = json.dumps(out)
    for raw in ("99887766", "5551234", "48213", "mia.li3818@example.com", "mia_li_3668"):
        assert raw not in blob, raw
    assert out["body"]["arguments"]["customer_id"] == pseudonym(KEY, "u", "99887766")
    assert out["body"]["result"]["owner"] == out["body"]["result"]["user_id"] == pseudonym(KEY, "u", "48213")
    # identifier keys and structural values that are no personal value pass as they are
    (plain,) = patterns_only.scrub_events([event("tool_call", {"tool": "t", "call_id": "call_2", "status": "ok",
                                                               "arguments": {"flight_number": "HAT001"}})], {})
    assert plain["body"]["arguments"] == {"flight_number": "HAT001"}


@pytest.mark.unit
@pytest.mark.parametrize("text, raw", [
    ("use my visa, the last digits are 7447", "7447"),
    ("the credit card whose number ends with 7447", "7447"),
    ("my zip code is 78750", "78750"),
    ("hi, my name is mia li and I need a refund", "mia li"),
])
def test_free_text_the_patterns_now_catch(patterns_only, text, raw):
    (out,) = patterns_only.scrub_events([event("user_message", {"text": text})], {})
    assert raw not in out["body"]["text"], out["body"]["text"]


@pytest.mark.unit
def test_a_session_past_its_dictionary_limit_has_its_new_values_dead_lettered(patterns_only, monkeypatch):
    """A dictionary is one changelog record: past the broker's 16 MiB the save failed and the worker stopped at
    every restart. Past the limit, an event that would add a value fails to scrub (a dead letter); the others go on."""
    import privacy.scrub as scrub
    from privacy.keystore import KeyStore
    from privacy.worker import scrub_batch

    monkeypatch.setattr(scrub, "MAX_DICTIONARY_VALUES", 3)
    msgs = [event("user_message", {"text": f"mail me at person{i}@example.com"}) for i in range(4)]
    msgs.append(event("user_message", {"text": "thanks"}))
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as d:
        out, _ = scrub_batch(patterns_only, KeyStore(Path(d) / "keys.sqlite3"), msgs, {})
    errors = [r for r in out if isinstance(r, str)]
    # the user's pseudonym and two emails fill it: the third and fourth emails are refused, "thanks" goes on
    assert [isinstance(r, str) for r in out] == [False, False, True, True, False]
    assert all("DictionaryFull" in e and "MAX_DICTIONARY_VALUES" in e for e in errors)
    assert "person2" not in json.dumps([r for r in out if isinstance(r, dict)])


# ---- street addresses in any case (privacy-6) ----------------------------------------------------------------------
@pytest.mark.unit
@pytest.mark.parametrize("text, raw, kept", [
    ("i live at 123 main street", ["123 main", "main street"], ["i live at "]),
    ("ship it to 42 oak ave apt 5", ["42 oak", "apt 5"], ["ship it to "]),
    ("445 maple dr, austin tx 78701", ["445 maple", "78701"], [", austin tx "]),  # city and state stay
    ("my address is 9 elm rd", ["9 elm rd"], ["my address is "]),
    ("I LIVE AT 123 MAIN STREET, APT 4B", ["123 MAIN", "4B"], ["I LIVE AT "]),
    ("Send it to 975 sunset Drive, suite 217 please", ["975 sunset", "217"], [" please"]),
    ("new address: 77 north highland blvd. thanks", ["77 north", "highland"], [" thanks"]),
    ("it's 350 5th ave #12, new york, ny 10118-0110", ["350 5th", "#12", "10118"], [", new york, ny "]),
    ("deliver to 88 bay st unit c", ["88 bay", "unit c"], ["deliver to "]),
    ("8 st. james's place", ["james's"], []),
    ("address:2100 sunset blvd", ["2100 sunset"], ["address:"]),
    ("the apartment is suite 217", ["217"], ["the apartment is "]),
    ("i live at 1520 broadway, new york ny 10036", ["1520 broadway", "10036"], [", new york ny "]),
])
def test_street_addresses_are_caught_in_any_case(patterns_only, text, raw, kept):
    """Under privacy-5 the address needed capitals ("123 Main Street"): a lower-case one in a chat message passed."""
    out = patterns_only.scrub_text(text, SessionDictionary())
    assert "<ADDRESS_1>" in out, out
    for value in raw:
        assert value not in out, out
    for value in kept:
        assert value in out, out


@pytest.mark.unit
@pytest.mark.parametrize("text", [
    "Flight HAT123 departs at 3:30 pm", "flight hat123 lands at 10:45 am, gate 12",
    "I have 3 bags", "we are 2 passengers and 1 infant", "it takes 15 minutes",
    "a 1 way ticket please", "no way, that's too expensive", "it's 2 hours each way", "2 free checked bags each way",
    "3 bags on the way", "5 stops along the way", "the team came 2nd place", "2 place settings", "a 5 star place",
    "3 events take place", "dr smith will call back", "at 3 pm dr smith will call", "give me 2 minutes, dr",
    "$150 total", "$1,250 total, 3 checked bags", "it costs 2 dollars per way", "reservation 4wq150 for 2 passengers",
    "a 20 minute drive from the airport", "10 hours drive", "1.5 mile drive", "a 2 lane road", "a 1 way street",
    "the 10:30 meeting place", "2024-05-20 departure", "i want 2 exit row seats", "1 seat in the back row",
    "3 flights in a row", "2 days in court", "4 people in a circle", "terminal 2 food court",
    "i have 2 broadway tickets", "Total: 247\n\nThis way please",
])
def test_a_number_before_ordinary_words_is_no_address(patterns_only, text):
    """Counts, times, prices and ids of the airline domain before a suffix-like word ("way", "place", "drive",
    "dr", "row", "court") are no street: a street takes 1-4 name words, and none of these is one."""
    assert patterns_only.scrub_text(text, SessionDictionary()) == text


@pytest.mark.unit
@pytest.mark.parametrize("case", [str, str.lower, str.upper])
def test_every_customer_address_of_tau_bench_is_caught_in_any_case(patterns_only, case):
    """All 500 addresses of the τ-bench customer database, written into a sentence: street, unit and zip go, the
    city stays (as it does in a structured address)."""
    from tests.conftest import TAU

    users = json.loads((TAU / "airline-users.json").read_text()).values()
    left = []
    for u in users:
        a = u["address"]
        text = case(f"please ship it to {a['address1']} {a['address2']}, {a['city']} {a['state']} {a['zip']} thanks")
        out = patterns_only.scrub_text(text, SessionDictionary())
        if any(case(v) in out for v in (a["address1"], a["address2"], a["zip"])) or case(a["city"]) not in out:
            left.append(out)
    assert len(users) == 500 and left == []


@pytest.mark.unit
def test_lower_cased_tau_bench_text_holds_no_address_its_original_does_not():
    """Every text of the 200 τ-bench trajectories, lower-cased: the address recognizers find exactly what they find
    in the original (the customers' addresses in tool results), no count, time, price or id the capitals had
    kept apart from an address."""
    from privacy import policy
    from privacy.leakage import strings_of
    from tests.conftest import TAU

    patterns = [(label, p) for label, p in policy.TEXT_PATTERNS if label in ("ADDRESS", "ZIP")]

    def spans(text: str) -> set[tuple[int, int, str]]:
        return {(m.start(1 if p.groups else 0), m.end(1 if p.groups else 0), label)
                for label, p in patterns for m in p.finditer(text)}

    raw = json.loads((TAU / "gpt-4o-airline.json").read_text())
    texts = list(dict.fromkeys(t for r in raw for t in strings_of(r["traj"])))
    found = [spans(t) for t in texts]
    assert sum(map(len, found)) > 90  # the corpus does hold addresses, units and zip codes (99 in 3,818 texts)
    assert [spans(t.lower()) for t in texts] == found


@pytest.mark.unit
@pytest.mark.parametrize("text", [
    "please ship to 1 main st apt" + " " * 64000 + "!",   # took ~2 minutes under privacy-6's first patterns
    "1" + " " * 64000 + "x",
    "1 " + "a " * 32000,
    " ".join(f"{i} main" for i in range(8000)),
    "12 main st " * 6000,
    "1 main st " + "springfield " * 5000 + "12345",
], ids=["unit-then-spaces", "spaces-after-a-number", "one-letter-words", "numbered-words", "addresses", "zip-far"])
def test_no_text_pattern_backtracks_on_a_long_message(text):
    """A hang guard, not a speed test: each of these 64 KB messages takes ~20–140 ms through every pattern; a
    pattern that backtracks quadratically takes minutes on one, and the scrub process's deadline dead-letters it."""
    import time

    from privacy.policy import TEXT_PATTERNS

    started = time.perf_counter()
    for _, pattern in TEXT_PATTERNS:
        for _ in pattern.finditer(text):
            pass
    assert time.perf_counter() - started < 5.0
