"""Measured leakage: all of τ-bench airline through the real worker (the session's `tau_lake`, Presidio NER on),
every downstream table searched for every PII value of the customer database; and the domain tokens that must
survive."""
import orjson
import pytest

from lake.readers import read_table
from privacy.leakage import GroundTruth, LeakScanner, domain_tokens, strings_of, survival
from schemas.tables import BRONZE_DEADLETTER, BRONZE_EVENTS, SILVER_EPISODES, SILVER_STEPS
from tests.conftest import TAU

pytestmark = pytest.mark.integration
DOWNSTREAM = (BRONZE_EVENTS, BRONZE_DEADLETTER, SILVER_STEPS, SILVER_EPISODES)


def _texts(settings):
    for spec in DOWNSTREAM:
        for row in read_table(settings, spec).to_pylist():
            yield from strings_of(row)


def test_no_pii_of_the_customer_database_reaches_any_downstream_table(tau_lake):
    s, _, events = tau_lake
    scanner = LeakScanner(GroundTruth.load(TAU / "airline-users.json"))
    before = scanner.scan(orjson.dumps(e.event).decode() for e in events)
    assert before.total > 100  # the source really is full of PII: the scan can see it
    leaks = scanner.scan(_texts(s))
    assert leaks.total == 0, f"leaked {leaks.found}:\n" + "\n".join(leaks.examples)


def test_domain_tokens_survive_scrubbing(tau_lake):
    s, _, events = tau_lake
    kept = survival(domain_tokens(orjson.dumps(e.event).decode() for e in events), domain_tokens(_texts(s)))
    for kind, (survived, total) in kept.items():
        assert total > 0 and survived / total >= 0.98, f"{kind}: only {survived} of {total} survived"
