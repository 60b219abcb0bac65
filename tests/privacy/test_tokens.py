"""Sealed user references: deterministic, bound to the pseudonym, and unreadable once the user's key is gone."""
import os

import pytest

from privacy.tokens import PREFIX, reveal, seal

pytestmark = pytest.mark.unit


def test_a_token_opens_with_the_users_key_only():
    key = os.urandom(32)
    token = seal(key, "u_a", "mia_li_3668")
    assert token.startswith(PREFIX) and "mia" not in token
    assert reveal(key, "u_a", token) == "mia_li_3668"
    assert reveal(os.urandom(32), "u_a", token) is None  # after shredding, a new key opens nothing
    assert reveal(key, "u_b", token) is None  # copied onto another user's row
    assert reveal(key, "u_a", "garbage") is None and reveal(key, "u_a", PREFIX + "AAAA") is None


def test_sealing_is_deterministic_so_replays_agree():
    key = os.urandom(32)
    assert seal(key, "u_a", "x_1") == seal(key, "u_a", "x_1") != seal(key, "u_a", "x_2")
