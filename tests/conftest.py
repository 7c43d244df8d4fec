"""Shared test fixtures: paths to ../shared and small helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REFERENCE = SHARED / "fixtures" / "nex-reference-example"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE.is_dir():
        pytest.fail(f"reference example missing: expected {REFERENCE} (../shared beside the repo)")
    return REFERENCE
