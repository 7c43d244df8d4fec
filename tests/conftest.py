"""Shared test fixtures: paths to ../shared and small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

# CI explores the same examples on every run (no flaky reds); locally, examples vary.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REFERENCE = SHARED / "fixtures" / "nex-reference-example"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE.is_dir():
        pytest.fail(f"reference example missing: expected {REFERENCE} (../shared beside the repo)")
    return REFERENCE


# --------------------------------------------------------------------------- CI: no skips
def _under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes", "on")


def _skipped_reports(config) -> list:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    return list(reporter.stats.get("skipped", [])) if reporter is not None else []


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Under CI, name every skipped test: a skip there means a missing install step."""
    skipped = _skipped_reports(config)
    if _under_ci() and skipped:
        terminalreporter.section("CI: skipped tests fail the run", red=True)
        for report in skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
            terminalreporter.write_line(f"{report.nodeid}: {reason}")


def pytest_unconfigure(config):
    """Last step of the session: drop what Prefect's in-process services could not deliver
    to a server the tests already stopped, so the interpreter exits at once."""
    from tests.servers import discard_prefect_backlog

    dropped = discard_prefect_backlog()
    if dropped:
        print(f"\nconftest: dropped {dropped} undeliverable Prefect log/event items at exit")


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    """Under CI (``CI=true``), any skipped test or module makes the run fail (exit 1), so
    a missing optional install (torch, the model packages, ...) cannot pass unnoticed."""
    if _under_ci() and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED) \
            and _skipped_reports(session.config):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
