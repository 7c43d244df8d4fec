"""The test session exits promptly after its Prefect servers are gone.

Prefect task runs in the test process queue events for their server; when that server no
longer answers, Prefect's exit hook tries each event about 7 s before giving up, so a few
hundred of them kept a CI run alive for over an hour after its last test passed.
``tests.servers.discard_prefect_backlog`` (run by conftest at the end of the session) drops
them; this test runs task runs against a dead API in a fresh interpreter and times its exit."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from tests.servers import REPO

pytest.importorskip("prefect")

SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from prefect import task
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings
    from tests.servers import (discard_prefect_backlog, free_port, start_prefect, stop_group,
                               wait_http)

    @task
    def small(i):
        return i

    root = Path(sys.argv[1])
    port = free_port()
    server = start_prefect(root, port)
    api = f"http://127.0.0.1:{port}/api"
    wait_http(f"{api}/health", server, root / "prefect.log")
    with temporary_settings({PREFECT_API_URL: api, PREFECT_HOME: str(root / "home")}):
        assert small(0) == 0
        stop_group(server)
        assert [small(i) for i in range(4)] == [0, 1, 2, 3]  # events for a dead server
        print("stopped", time.monotonic(), flush=True)
        print("dropped", discard_prefect_backlog(), flush=True)
""")


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_undeliverable_events_do_not_hold_the_exit(tmp_path):
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=360)
    ended = time.monotonic()
    assert done.returncode == 0, done.stderr[-2000:]
    stopped = float(done.stdout.split("stopped", 1)[1].split()[0])
    dropped = int(done.stdout.split("dropped", 1)[1].split()[0])
    assert dropped >= 4  # the task runs after the stop left events behind
    # without the discard each dropped event costs about 7 s at exit; with it, at most the
    # one event in flight does
    assert ended - stopped < 30, f"exit took {ended - stopped:.0f} s after the server stopped"
