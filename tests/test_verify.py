"""verify-api against an API on loopback whose answers change over time: the first healthy
answer must come within the budget, a streak under way when the budget ends may finish,
and the budget stretches with the load of the machine, read while it verifies."""

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prefect.blocks.system import Secret

from blocks.environment import ReleaseEnvironment
from targets.errors import StepFailed
from tasks.verify import verify_api

VERSION = "v2"


@contextmanager
def api(answer: Callable[[float], int]) -> Iterator[str]:
    """An API answering /health with `answer(seconds since its first request)` as the
    status and VERSION; its URL."""
    first: list[float] = []

    class Health(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            first[:] = first or [time.monotonic()]
            status = answer(time.monotonic() - first[0])
            body = f'{{"status": "ok", "version": "{VERSION}"}}'.encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def environment(**verification) -> ReleaseEnvironment:
    return ReleaseEnvironment(
        environment="verify",
        image_repository="127.0.0.1:5000/verify/backend",
        database_url=Secret(value="postgresql://nobody@127.0.0.1:1/none"),
        **verification,
    )


@pytest.fixture
def load(monkeypatch) -> Callable[[float], None]:
    """Set the machine's 1-minute load average as verification reads it, on 2 CPUs."""
    monkeypatch.setattr(os, "cpu_count", lambda: 2)

    def set_load(value: float) -> None:
        monkeypatch.setattr(os, "getloadavg", lambda: (value, value, value))

    set_load(0.0)
    return set_load


def verify(env: ReleaseEnvironment, url: str) -> None:
    verify_api(env, object(), url, version=VERSION, image=None)


def test_a_streak_under_way_when_the_budget_ends_may_finish(load):
    env = environment(health_budget_seconds=1, health_consecutive=3, health_interval_seconds=0.3)
    with api(lambda t: 200 if t > 0.7 else 503) as url:  # 3 answers need until ~1.3 s
        verify(env, url)


def test_an_api_that_flaps_fails_once_the_budget_is_spent(load):
    env = environment(health_budget_seconds=1, health_consecutive=3, health_interval_seconds=0.2)
    with api(lambda t: 200 if int(t / 0.2) % 2 else 503) as url, pytest.raises(StepFailed) as info:
        verify(env, url)
    assert "not healthy within 1 s (0/3 consecutive healthy answers)" in str(info.value)


def test_the_budget_stretches_with_the_load_read_while_verifying(load):
    env = environment(health_budget_seconds=1, health_consecutive=1, health_interval_seconds=0.2)

    def answer(t: float) -> int:
        if t > 0.5:
            load(6.0)  # three times as many runnable processes as CPUs: 3 s
        return 200 if t > 2 else 503

    with api(answer) as url:
        verify(env, url)
    with api(lambda t: 503) as url, pytest.raises(StepFailed, match="not healthy within 3 s"):
        verify(env, url)
