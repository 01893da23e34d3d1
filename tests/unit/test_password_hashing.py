"""Passwords are hashed with werkzeug's production scrypt cost.

Every other test in the session hashes with a small scrypt n (tests/conftest.py
``TEST_HASH_METHOD``) to save time; this module keeps the production method.
"""

from __future__ import annotations

import pytest
from werkzeug.security import check_password_hash

from kvmvps.services import users

pytestmark = pytest.mark.production_hashing

PASSWORD = "correct horse battery"


def test_production_hashes_are_scrypt_at_full_cost() -> None:
    assert users.HASH_METHOD == "scrypt"
    stored = users.password_hash(PASSWORD)
    method, salt, digest = stored.split("$")
    assert method == "scrypt:32768:8:1"  # n=2**15, r=8, p=1: 32 MiB per guess
    assert len(salt) >= 16 and len(digest) == 128
    assert check_password_hash(stored, PASSWORD)
    assert not check_password_hash(stored, PASSWORD + "x")
    assert users.password_hash(PASSWORD) != stored  # salted


def test_the_cheap_test_method_is_not_in_force_here(td_ctx: object) -> None:
    """The production_hashing marker really turns the tests' cheap method off."""
    assert users.password_hash(PASSWORD).startswith("scrypt:32768:8:1$")
