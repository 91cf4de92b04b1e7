"""The benchmark's load generator against a small HTTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bench.loadgen import run_windows
from bench.workload import SINGLE_PATH, PlannedRequest, RequestFactory

RESPONSE_DELAY_S = 0.02


@dataclass
class Server:
    url: str
    keys: list[str]


async def accept(request: Request) -> JSONResponse:
    # Every third request gets a 503 with a short Retry-After, as the gateway's in-flight limit does.
    keys: list[str] = request.app.state.keys
    keys.append(request.headers["Idempotency-Key"])
    await asyncio.sleep(RESPONSE_DELAY_S)
    if len(keys) % 3 == 0:
        return JSONResponse({"error": {"code": "unavailable"}}, status_code=503, headers={"Retry-After": "0"})
    return JSONResponse({"id": "x", "sentiment_status": "scored"}, status_code=201)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    app = Starlette(routes=[Route(SINGLE_PATH, accept, methods=["POST"])])
    app.state.keys = []
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    uvicorn_server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uvicorn_server.run, daemon=True)
    thread.start()

    deadline = time.monotonic() + 10.0
    while not uvicorn_server.started:
        assert time.monotonic() < deadline, "the test server did not start within 10 s"
        time.sleep(0.01)

    yield Server(url=f"http://127.0.0.1:{port}", keys=app.state.keys)

    uvicorn_server.should_exit = True
    thread.join(timeout=10.0)


def counting_factory() -> tuple[list[str], RequestFactory]:
    sent: list[str] = []

    def next_request() -> PlannedRequest:
        key = f"test-{len(sent)}"
        sent.append(key)
        return PlannedRequest(SINGLE_PATH, b"{}", {"Content-Type": "application/json", "Idempotency-Key": key}, items=1)

    return sent, next_request


def test_windows_split_one_loop(server: Server) -> None:
    server.keys.clear()
    boundaries: list[tuple[int, float]] = []
    _, factory = counting_factory()

    started = time.perf_counter()
    results = asyncio.run(
        run_windows(
            server.url,
            "key",
            factory,
            concurrency=4,
            warmup_s=0.3,
            duration_s=0.5,
            windows=2,
            on_boundary=lambda index: boundaries.append((index, time.perf_counter() - started)),
        )
    )

    assert [index for index, _ in boundaries] == [0, 1, 2]
    assert boundaries[0][1] == pytest.approx(0.3, abs=0.1)
    assert boundaries[1][1] == pytest.approx(0.8, abs=0.1)
    assert len(results) == 2
    assert all(result.elapsed_s == 0.5 for result in results)
    assert all(result.ok > 0 for result in results)
    assert all(result.statuses["503"] > 0 for result in results)


def test_windows_count_each_try_once(server: Server) -> None:
    server.keys.clear()
    sent, factory = counting_factory()

    results = asyncio.run(
        run_windows(server.url, "key", factory, concurrency=4, warmup_s=0.3, duration_s=0.5, windows=2)
    )
    counted = sum(result.requests for result in results)

    # The warm-up's tries count nowhere, so the windows hold fewer tries than the server saw.
    assert 0 < counted < len(server.keys)
    assert all(sum(result.statuses.values()) == result.requests for result in results)
    assert all(result.ok == result.items_accepted for result in results)
    # A 503 is retried with the same key, so the server saw more tries than new requests.
    assert len(set(server.keys)) == len(sent)
    assert len(server.keys) > len(sent)
