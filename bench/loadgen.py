"""A closed-loop HTTP load generator: a fixed number of asyncio workers, each sending one
request after another with httpx, for a fixed time.

Each worker sends its next request as soon as it receives the response to the previous
one, so the number of requests in flight stays at the concurrency. `run_load` runs one loop
for a fixed time; requests still in flight at the deadline are awaited and counted, so the
measured time includes that tail. `run_windows` keeps one loop running through a warm-up and
several measurement windows.

A 429 or 503 is handled as a well-behaved client would: the worker waits for Retry-After
(at most RETRY_AFTER_MAX_S) plus a random extra of up to half of it, and sends the same
request again, with the same Idempotency-Key. The extra keeps the rejected workers from
coming back all at once, which would leave the gateway's free slots empty in between. `submission_latencies_s` measures from the first try to the success, so
the waits show there, while `ok_latencies_s` has the latency of the successful response.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import psutil

from bench.workload import SINGLE_PATH, PlannedRequest, RequestFactory

# Per-request limit. It is above the pipeline's own limits (20 s for the commit, 30 s in
# Serve's proxy), so the service responds before the client gives up.
REQUEST_TIMEOUT_S = 60.0
# Safety bound on the requests of one measurement, whatever its duration.
MAX_REQUESTS = 200_000
# Maximum wait after a 429 or 503, whatever its Retry-After header requests. Without the
# header the wait is RETRY_AFTER_DEFAULT_S.
RETRY_AFTER_MAX_S = 5.0
RETRY_AFTER_DEFAULT_S = 1.0


@dataclass
class LoadResult:
    """Counts, statuses and latencies of one measurement at one concurrency."""

    concurrency: int
    elapsed_s: float
    requests: int
    ok: int
    items_accepted: int
    items_rejected: int
    items_without_sentiment: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    ok_latencies_s: list[float] = field(default_factory=list)
    submission_latencies_s: list[float] = field(default_factory=list)
    client_cpu_s: float = 0.0

    @property
    def requests_per_s(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def items_per_s(self) -> float:
        return self.items_accepted / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def latency_ms(self, percentile: float) -> float:
        """Return the nearest-rank percentile of the successful requests' latency, in ms."""
        if not self.ok_latencies_s:
            return math.nan
        return nearest_rank_ms(self.ok_latencies_s, percentile)

    def submission_latency_ms(self, percentile: float) -> float:
        """Return the nearest-rank percentile of the time from a submission's first try to its success, in ms."""
        return nearest_rank_ms(self.submission_latencies_s, percentile)

    def errors(self) -> dict[str, int]:
        """Return the count of each unsuccessful outcome: an HTTP status or a transport error."""
        return {outcome: count for outcome, count in sorted(self.statuses.items()) if not outcome.startswith("2")}


def nearest_rank_ms(latencies_s: list[float], percentile: float) -> float:
    """Return the nearest-rank percentile of `latencies_s` in ms, or NaN when it is empty."""
    if not latencies_s:
        return math.nan
    ordered = sorted(latencies_s)
    rank = max(1, math.ceil(percentile / 100 * len(ordered)))
    return ordered[rank - 1] * 1000


def retry_after_s(response: httpx.Response) -> float:
    """Return the wait in seconds that the Retry-After header of a 429 or 503 requests, within bounds."""
    try:
        wait_s = float(response.headers.get("Retry-After", RETRY_AFTER_DEFAULT_S))
    except ValueError:
        wait_s = RETRY_AFTER_DEFAULT_S  # An HTTP date; the gateway and Serve send seconds.
    return min(max(wait_s, 0.0), RETRY_AFTER_MAX_S)


def count_items(planned: PlannedRequest, response: httpx.Response) -> tuple[int, int, int]:
    """Return (accepted, rejected, stored without sentiment) items of a successful response.

    A single submission is accepted with 201. A batch responds with 200, the counts in its
    body and one result per item. A body without the counts counts every item as rejected.
    An item with `"sentiment_status": "pending"` was stored without sentiment, because the
    model failed or took too long, and is scored later.
    """
    try:
        body = response.json()
    except ValueError:
        return 0, planned.items, 0

    if planned.path == SINGLE_PATH:
        pending = 1 if isinstance(body, dict) and body.get("sentiment_status") == "pending" else 0
        return (1, 0, pending) if response.status_code == 201 else (0, 1, 0)

    try:
        accepted, rejected = int(body["accepted"]), int(body["rejected"])
        pending = sum(1 for item in body.get("results", []) if item.get("sentiment_status") == "pending")
    except (KeyError, TypeError, ValueError, AttributeError):
        return 0, planned.items, 0
    return accepted, rejected, pending


async def run_load(
    base_url: str,
    api_key: str,
    factory: RequestFactory,
    *,
    concurrency: int,
    duration_s: float,
) -> LoadResult:
    """Send requests from `factory` with `concurrency` workers for `duration_s` seconds."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    result = LoadResult(concurrency=concurrency, elapsed_s=0.0, requests=0, ok=0, items_accepted=0, items_rejected=0)
    process = psutil.Process()
    cpu_before = sum(process.cpu_times()[:2])

    async with httpx.AsyncClient(
        base_url=base_url, headers={"X-API-Key": api_key}, limits=limits, timeout=REQUEST_TIMEOUT_S
    ) as client:
        started = time.perf_counter()
        deadline = started + duration_s
        workers = [_worker(client, factory, deadline, lambda sent_at: result) for _ in range(concurrency)]
        await asyncio.gather(*workers)
        result.elapsed_s = time.perf_counter() - started

    result.client_cpu_s = sum(process.cpu_times()[:2]) - cpu_before
    return result


async def run_windows(
    base_url: str,
    api_key: str,
    factory: RequestFactory,
    *,
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    windows: int,
    on_boundary: Callable[[int], None] | None = None,
) -> list[LoadResult]:
    """Send requests with `concurrency` workers through a warm-up and `windows` measurements of `duration_s` each.

    The workers run without a pause from the warm-up to the end of the last window, so no
    window starts with every worker sending at once. A try counts in the window in which it
    was sent, and warm-up tries count nowhere. Tries still in flight after the last window
    are awaited and counted in it. Each window's elapsed time is `duration_s`: a closed loop
    sends tries at the rate at which they complete. `on_boundary(i)` runs at the start of
    window i and, with i equal to `windows`, once the tries of the last window have completed.
    """
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    results = [
        LoadResult(concurrency=concurrency, elapsed_s=duration_s, requests=0, ok=0, items_accepted=0, items_rejected=0)
        for _ in range(windows)
    ]
    process = psutil.Process()
    cpu_at_boundaries: list[float] = []

    def boundary(index: int) -> None:
        cpu_at_boundaries.append(sum(process.cpu_times()[:2]))
        if on_boundary is not None:
            on_boundary(index)

    async with httpx.AsyncClient(
        base_url=base_url, headers={"X-API-Key": api_key}, limits=limits, timeout=REQUEST_TIMEOUT_S
    ) as client:
        first_window_at = time.perf_counter() + warmup_s
        deadline = first_window_at + windows * duration_s

        def result_for(sent_at: float) -> LoadResult | None:
            index = math.floor((sent_at - first_window_at) / duration_s)
            return results[min(index, windows - 1)] if index >= 0 else None

        async def mark_boundaries() -> None:
            for index in range(windows):
                await asyncio.sleep(max(first_window_at + index * duration_s - time.perf_counter(), 0.0))
                boundary(index)

        workers = [_worker(client, factory, deadline, result_for) for _ in range(concurrency)]
        await asyncio.gather(mark_boundaries(), *workers)

    boundary(windows)
    for index, result in enumerate(results):
        result.client_cpu_s = cpu_at_boundaries[index + 1] - cpu_at_boundaries[index]
    return results


async def _worker(
    client: httpx.AsyncClient, factory: RequestFactory, deadline: float, result_for: Callable[[float], LoadResult | None]
) -> None:
    """Send requests until `deadline`; record each try in the result that `result_for(sent_at)` returns, if any."""
    retry: tuple[PlannedRequest, float] | None = None
    while time.perf_counter() < deadline:
        planned, first_sent_at = retry if retry is not None else (factory(), time.perf_counter())
        retry = None
        sent_at = time.perf_counter()
        result = result_for(sent_at)
        if result is not None:
            if result.requests >= MAX_REQUESTS:
                return
            result.requests += 1

        try:
            response = await client.post(planned.path, content=planned.body, headers=planned.headers)
        except httpx.HTTPError as error:
            if result is not None:
                result.statuses[f"transport:{type(error).__name__}"] += 1
            continue

        latency_s = time.perf_counter() - sent_at
        if result is not None:
            result.statuses[str(response.status_code)] += 1
        if response.status_code in (429, 503):
            wait_s = retry_after_s(response) * random.uniform(1.0, 1.5)
            await asyncio.sleep(min(wait_s, max(deadline - time.perf_counter(), 0.0)))
            retry = (planned, first_sent_at)
            continue
        if not response.is_success or result is None:
            continue

        accepted, rejected, without_sentiment = count_items(planned, response)
        result.ok += 1
        result.ok_latencies_s.append(latency_s)
        result.submission_latencies_s.append(time.perf_counter() - first_sent_at)
        result.items_accepted += accepted
        result.items_rejected += rejected
        result.items_without_sentiment += without_sentiment


async def probe(base_url: str, api_key: str, planned: PlannedRequest) -> tuple[int, str]:
    """Send one request and return its status and the start of its body, for route checks."""
    async with httpx.AsyncClient(base_url=base_url, headers={"X-API-Key": api_key}, timeout=REQUEST_TIMEOUT_S) as client:
        response = await client.post(planned.path, content=planned.body, headers=planned.headers)
    text = response.text
    try:
        text = json.dumps(response.json())
    except ValueError:
        pass  # Not JSON: the raw text is kept.
    return response.status_code, text[:300]
