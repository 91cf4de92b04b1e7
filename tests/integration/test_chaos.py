"""Replica kills and an application restart under load: nothing acknowledged is lost or stored twice.

A bounded load of submissions, each with its own Idempotency-Key, goes through the gateway
while a thread disrupts the service: it kills one replica of every deployment in turn with
`ray.kill`, or restarts the whole Serve application. The client retries 429, 503 and
connection errors with the same key, as a real client would, until it gets a definite
response. Afterwards every submission must have exactly one row, and the
checks that run after shutdown compare the DuckDB file and the mail sink with the responses
that the clients got.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field

import httpx
import pytest

from tests.integration.conftest import Stack, mail_text

pytestmark = pytest.mark.integration

SUBMISSIONS = 400
CONCURRENCY = 16
KILL_ORDER = ("Persistence", "Enrichment", "Ingest", "Validation", "Notification")
KILL_INTERVAL_S = 3.0
CLIENT_DEADLINE_S = 300.0

KILL_SCRIPT = """
import json, sys
import ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
prefix = f"SERVE_REPLICA::feedbackbot#{sys.argv[2]}#"
names = [actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True) if actor["name"].startswith(prefix)]
if names:
    ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
print(json.dumps(names[:1]))
"""


@dataclass
class LoadReport:
    sent: int = 0
    acknowledged: dict[str, str] = field(default_factory=dict)  # idempotency key -> feedback id
    retries: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    connection_errors: int = 0
    killed: list[str] = field(default_factory=list)


def kill_replicas(stack: Stack, report: LoadReport, stop: threading.Event) -> None:
    address = f"127.0.0.1:{stack.service.config.ports.ray_gcs}"
    for deployment in KILL_ORDER:
        if stop.wait(KILL_INTERVAL_S):
            return
        result = subprocess.run(
            [sys.executable, "-c", KILL_SCRIPT, address, deployment],
            env=stack.service.ray_environment(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        report.killed.extend(json.loads(result.stdout.strip().splitlines()[-1]))


async def submit_until_answered(client: httpx.AsyncClient, payload: dict, key: str, report: LoadReport) -> None:
    deadline = time.monotonic() + CLIENT_DEADLINE_S
    first = True
    while time.monotonic() < deadline:
        if not first:
            report.retries += 1
        first = False
        try:
            response = await client.post("/v1/feedback", json=payload, headers={"Idempotency-Key": key})
        except httpx.TransportError:
            report.connection_errors += 1
            await asyncio.sleep(0.5)
            continue

        report.statuses[response.status_code] = report.statuses.get(response.status_code, 0) + 1
        if response.status_code == 201:
            feedback_id = response.json()["id"]
            earlier = report.acknowledged.setdefault(key, feedback_id)
            assert earlier == feedback_id, f"key {key} was acknowledged with two ids"
            return
        if response.status_code in (429, 502, 503, 504):
            await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
            continue
        pytest.fail(f"Unexpected {response.status_code} for key {key}: {response.text[:300]}")
    pytest.fail(f"Key {key} got no definite answer within {CLIENT_DEADLINE_S} s")


def make_payloads(run: str, count: int) -> dict[str, dict]:
    return {
        f"{run}-{uuid.uuid4()}": {
            "customer_name": f"{run} client {index}",
            "customer_email": f"{run}.{index}@example.com",
            "feedback_text": f"Submission {index} of the {run} run; the parcel was fine.",
            "rating": 1 + index % 5,
        }
        for index in range(count)
    }


def run_load_during(stack: Stack, payloads: dict[str, dict], disruption, report: LoadReport) -> None:
    """Send every payload until it gets a definite response, while `disruption(stop)` runs in a thread."""

    async def run_load() -> None:
        semaphore = asyncio.Semaphore(CONCURRENCY)
        limits = httpx.Limits(max_connections=CONCURRENCY)
        headers = {"X-API-Key": stack.keys.chaos}
        async with httpx.AsyncClient(base_url=stack.url, headers=headers, timeout=60.0, limits=limits) as client:

            async def one(key: str, payload: dict) -> None:
                async with semaphore:
                    report.sent += 1
                    await submit_until_answered(client, payload, key, report)

            await asyncio.gather(*(one(key, payload) for key, payload in payloads.items()))

    stop = threading.Event()
    errors: list[BaseException] = []

    def guarded() -> None:
        try:
            disruption(stop)
        except BaseException as error:  # noqa: BLE001 - re-raised in the test thread below
            errors.append(error)

    thread = threading.Thread(target=guarded, daemon=True)
    thread.start()
    try:
        asyncio.run(run_load())
    finally:
        stop.set()
        thread.join(timeout=300)
    if errors:
        raise errors[0]


def check_stored_once(stack: Stack, run: str, payloads: dict[str, dict], report: LoadReport, capsys) -> None:
    """Assert every payload was acknowledged with its own id, stored, and later confirmed by mail."""
    ids = list(report.acknowledged.values())
    with capsys.disabled():
        print(
            f"\n{run}: sent {report.sent}, acknowledged {len(ids)}, distinct ids {len(set(ids))}, "
            f"retries {report.retries}, connection errors {report.connection_errors}, "
            f"statuses {dict(sorted(report.statuses.items()))}, killed {report.killed}"
        )
    assert len(report.acknowledged) == len(payloads)
    assert len(set(ids)) == len(payloads)

    with stack.client(stack.keys.admin) as client:
        for key, feedback_id in report.acknowledged.items():
            stored = client.get(f"/v1/feedback/{feedback_id}")
            assert stored.status_code == 200, f"acknowledged feedback {feedback_id} is not stored"
            assert stored.json()["customer_name"] == payloads[key]["customer_name"]

    for key, feedback_id in report.acknowledged.items():
        stack.accepted[feedback_id] = {**payloads[key], "request_id": None}
        stack.chaos_ids.add(feedback_id)

    expected = set(ids)
    stack.wait_for_mail(lambda mails: expected <= confirmed_ids(mails), timeout_s=180.0)


def test_replica_kills_lose_nothing(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    report = LoadReport()
    payloads = make_payloads("replica-kill", SUBMISSIONS)

    run_load_during(stack, payloads, lambda stop: kill_replicas(stack, report, stop), report)

    assert len(report.killed) == len(KILL_ORDER), f"killed only {report.killed}"
    check_stored_once(stack, "replica-kill", payloads, report, capsys)


def test_app_restart_under_load(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    report = LoadReport()
    payloads = make_payloads("app-restart", SUBMISSIONS // 2)

    def restart_application(stop: threading.Event) -> None:
        if stop.wait(3.0):
            return
        stack.stop_graph()
        stack.service._deploy_graph()
        stack.graph_stopped = False

    run_load_during(stack, payloads, restart_application, report)

    assert report.statuses.get(503, 0) > 0, "the restart produced no 503, so it did not overlap the load"
    check_stored_once(stack, "app-restart", payloads, report, capsys)


def confirmed_ids(mails) -> set[str]:
    return {
        mail_text(mail).split("under the reference ", 1)[1].split(".", 1)[0]
        for mail in mails
        if mail["Subject"] == "We received your feedback"
    }
