"""Every bad order on the test driver: a one-line error and nothing changed."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmvps.services import Context
from tests.badinput import CASES, Case, check_case


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_order(td_ctx: Context, tmp_path: Path, case: Case) -> None:
    check_case(td_ctx, tmp_path, case)
