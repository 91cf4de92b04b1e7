"""The gateway's in-flight limits of the submit routes, against an upstream that keeps requests open.

A second Nginx, rendered by gateway/start.sh from the same template and key store as the
shared stack's, forwards to a small HTTP server of this test instead of Ray Serve. That
server keeps every POST open until the test releases it, so the number of requests in
flight is exact and no timing decides the outcome.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from feedbackbot.service import PROJECT_ROOT
from tests.integration.conftest import Stack

GATEWAY_PORT = 28081
UPSTREAM_PORT = 28001
SUBMIT_LIMIT = 3
BATCH_LIMIT = 1
VALID = {"customer_name": "Ada", "customer_email": "ada@example.com", "feedback_text": "Held in flight.", "rating": 4}


class HoldingUpstream(ThreadingHTTPServer):
    """HTTP server that responds to GET at once and keeps each POST open until `release` is set."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", UPSTREAM_PORT), HoldingHandler)
        self.release = threading.Event()
        self.posts_seen = 0
        self.lock = threading.Lock()


class HoldingHandler(BaseHTTPRequestHandler):
    server: HoldingUpstream

    def do_GET(self) -> None:
        self._answer(200, b"[]")

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with self.server.lock:
            self.server.posts_seen += 1
        self.server.release.wait(timeout=60)
        self._answer(201, b"{}")

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # The test reads the outcome from the responses. Access lines would only be noise.


def run_gateway(stack: Stack, run_dir: Path, action: str, **settings: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.update(
        FEEDBACKBOT_GATEWAY_DIR=str(run_dir),
        FEEDBACKBOT_KEYS_FILE=str(stack.service.config.keys_file),
        FEEDBACKBOT_GATEWAY_LISTEN=f"127.0.0.1:{GATEWAY_PORT}",
        FEEDBACKBOT_UPSTREAM=f"127.0.0.1:{UPSTREAM_PORT}",
        FEEDBACKBOT_PYTHON=sys.executable,
        FEEDBACKBOT_SUBMIT_MAX_IN_FLIGHT=str(SUBMIT_LIMIT),
        FEEDBACKBOT_BATCH_MAX_IN_FLIGHT=str(BATCH_LIMIT),
    )
    env.update(settings)
    return subprocess.run([str(PROJECT_ROOT / "gateway" / "start.sh"), action], env=env, capture_output=True, text=True)


@pytest.fixture
def upstream() -> Iterator[HoldingUpstream]:
    server = HoldingUpstream()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def run_dir() -> Iterator[Path]:
    """Run folder that Nginx's workers, which run as the user `nobody`, can open; pytest's tmp_path is private."""
    folder = Path(tempfile.mkdtemp(prefix="feedbackbot-in-flight-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def gateway(stack: Stack, upstream: HoldingUpstream, run_dir: Path) -> Iterator[str]:
    started = run_gateway(stack, run_dir, "start")
    assert started.returncode == 0, started.stderr
    try:
        yield f"http://127.0.0.1:{GATEWAY_PORT}"
    finally:
        stopped = run_gateway(stack, run_dir, "stop")
        assert stopped.returncode == 0, stopped.stderr


def wait_for_posts(upstream: HoldingUpstream, count: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with upstream.lock:
            if upstream.posts_seen >= count:
                return
        time.sleep(0.02)
    pytest.fail(f"The upstream saw {upstream.posts_seen} POSTs within {timeout_s:.0f} s, expected {count}")


def assert_busy(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == "1"
    error = response.json()["error"]
    assert error["code"] == "unavailable"
    assert "limit of submissions in progress" in error["message"]
    assert error["request_id"] == response.headers["X-Request-ID"]


def test_submit_over_limit_gets_503(stack: Stack, upstream: HoldingUpstream, gateway: str) -> None:
    headers = {"X-API-Key": stack.keys.submit}
    with ThreadPoolExecutor(max_workers=SUBMIT_LIMIT) as pool, httpx.Client(base_url=gateway, timeout=60) as client:
        held_posts = [pool.submit(client.post, "/v1/feedback", json=VALID, headers=headers) for _ in range(SUBMIT_LIMIT)]
        wait_for_posts(upstream, SUBMIT_LIMIT)

        over = [client.post("/v1/feedback", json=VALID, headers=headers) for _ in range(2)]
        listing = client.get("/v1/feedback", headers={"X-API-Key": stack.keys.analyst})
        upstream.release.set()
        answered = [future.result() for future in held_posts]
        after = client.post("/v1/feedback", json=VALID, headers=headers)

    for response in over:
        assert_busy(response)
    # Reads are not counted against the submissions in flight.
    assert listing.status_code == 200
    assert [response.status_code for response in answered] == [201] * SUBMIT_LIMIT
    assert after.status_code == 201
    assert upstream.posts_seen == SUBMIT_LIMIT + 1


def test_batch_limit_is_separate(stack: Stack, upstream: HoldingUpstream, gateway: str) -> None:
    headers = {"X-API-Key": stack.keys.submit}
    batch = {"submissions": [VALID, VALID]}
    with ThreadPoolExecutor(max_workers=1) as pool, httpx.Client(base_url=gateway, timeout=60) as client:
        held_batch = pool.submit(client.post, "/v1/feedback:batch", json=batch, headers=headers)
        wait_for_posts(upstream, 1)

        over = client.post("/v1/feedback:batch", json=batch, headers=headers)
        # A batch in flight leaves the single route's limit untouched.
        with ThreadPoolExecutor(max_workers=1) as single_pool:
            single = single_pool.submit(client.post, "/v1/feedback", json=VALID, headers=headers)
            wait_for_posts(upstream, 2)
            upstream.release.set()
            assert single.result().status_code == 201
        assert held_batch.result().status_code == 201

    assert_busy(over)


def test_bad_limit_is_rejected(stack: Stack, run_dir: Path) -> None:
    result = run_gateway(stack, run_dir, "start", FEEDBACKBOT_SUBMIT_MAX_IN_FLIGHT="lots")

    assert result.returncode != 0
    assert "invalid FEEDBACKBOT_SUBMIT_MAX_IN_FLIGHT=lots: expected a whole number" in result.stderr
    assert not (run_dir / "nginx.pid").exists()
