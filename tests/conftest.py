"""Shared fixtures: where the real test data lives, and small generated inputs."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# ../shared/realdata beside the checkout (read-only, never copied into the repository).
REALDATA = REPO.parent / "shared" / "realdata"


@pytest.fixture(scope="session")
def realdata() -> Path:
    """The real orthophotos and street photos; the test is skipped when they are absent."""
    if not REALDATA.is_dir():
        pytest.skip(f"real test data not found at {REALDATA} (../shared/realdata beside the checkout)")
    return REALDATA
