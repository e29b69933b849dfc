"""Shared test helpers: where the golden fixtures live."""

import os
from pathlib import Path

import pytest

FIXTURES = Path(os.environ.get("LEVO_FIXTURES", Path(__file__).resolve().parents[2] / "shared" / "fixtures"))


@pytest.fixture(scope="session")
def fixtures() -> Path:
    if not FIXTURES.is_dir():
        pytest.fail(f"golden fixtures not found at {FIXTURES} (set LEVO_FIXTURES)")
    return FIXTURES
