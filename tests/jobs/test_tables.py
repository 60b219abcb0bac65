"""The structural checks every gold publish passes first: declared NOT NULL columns and unique declared keys."""
import pyarrow as pa
import pytest

from jobs.tables import check_before_publish
from quality.errors import PublishRefused
from schemas.tables import TableSpec

pytestmark = pytest.mark.unit

SPEC = TableSpec("gold", "things", pa.schema([pa.field("id", pa.string(), nullable=False),
                                              pa.field("rev", pa.int32(), nullable=False),
                                              pa.field("score", pa.float64(), nullable=False),
                                              pa.field("note", pa.string())]),
                 (), ("id", "rev"), "a test table")


def rows(*tuples):
    return pa.Table.from_pylist([dict(zip(("id", "rev", "score", "note"), t)) for t in tuples], schema=SPEC.schema)


def test_rows_with_unique_keys_and_no_nulls_pass():
    assert check_before_publish(rows(("a", 0, 0.5, None), ("a", 1, 0.5, "x"), ("b", 0, 1.0, None)), SPEC) == 3


def test_a_null_in_a_not_null_column_refuses_the_publish():
    data = rows(("a", 0, 0.5, None), ("b", 0, 1.0, None)).set_column(2, "score", pa.array([0.5, None]))
    with pytest.raises(PublishRefused, match=r"gold/things: nulls in NOT NULL columns \{'score': 1\}; nothing"):
        check_before_publish(data, SPEC)


def test_a_repeated_key_refuses_the_publish():
    with pytest.raises(PublishRefused, match=r"gold/things: 2 rows repeat a key \('id', 'rev'\); nothing"):
        check_before_publish(rows(("a", 0, 0.5, None), ("a", 0, 0.7, None), ("a", 0, 0.1, None), ("a", 1, 0.5, None)),
                             SPEC)


def test_an_empty_publish_passes():
    assert check_before_publish(rows(), SPEC) == 0
