"""Faults under load: replica kills, a mail outage, a failing model, an application restart.

Each test sends a bounded load of submissions through the gateway, each with its own
Idempotency-Key, while a thread disrupts the service. The client retries 429, 503 and
connection errors with the same key, as a real client would, until it gets a definite
response. Afterwards every acknowledged submission must be stored exactly once, carry a
sentiment (late scoring included), and have produced the notifications it owes at the mail
sink; the counts are printed. The `after_shutdown` tests in test_pipeline.py then compare
the DuckDB file and the sink with the responses the clients received.

FEEDBACKBOT_CHAOS_SUBMISSIONS sets the load per test (default 2000). Each disruption starts
once a twentieth of the load is acknowledged; below about 1000 the load can end before the
restart test's shutdown takes effect.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field

import httpx
import pytest

from tests.integration.conftest import Stack, count_notifications

# Failure lines end with the masked target URL, and in a JSON log line a quote follows it.
DEAD_TARGET_HOST = "127.0.0.1:9\""

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

SUBMISSIONS = int(os.environ.get("FEEDBACKBOT_CHAOS_SUBMISSIONS", "2000"))
CONCURRENCY = 32
ALERT_MAX_RATING = 2
# The sink stays down until the first send to it fails, then this long; at most MAIL_OUTAGE_MAX_S.
MAIL_OUTAGE_AFTER_FAILURE_S = 3.0
MAIL_OUTAGE_MAX_S = 30.0
DRILL_S = 8.0
# One submission in ten has a low rating and one in five a negative text with a good
# rating, which owes an alert only once it is scored. Alerts are kept to a minority because
# each also goes to the dead target and fails there 8 times, which keeps the senders busy.
RATINGS = (1, 3, 4, 5, 5, 4, 3, 5, 4, 5)
TEXTS = (
    "Order {index}: the parcel was fine.",
    "Order {index}: wonderful service, fast and friendly, thank you!",
    "Order {index}: it arrived broken and nobody answered my emails.",
    "Order {index}: the parcel was fine.",
    "Order {index}: wonderful service, fast and friendly, thank you!",
)
KILL_ORDER = ("Persistence", "Enrichment", "Ingest", "Validation", "Notification")
KILL_INTERVAL_S = 1.5
CLIENT_DEADLINE_S = 300.0

# Connects to Ray first (a few seconds), then, on "go" from stdin, kills one replica of each
# deployment named in its arguments, KILL_INTERVAL_S apart, printing each actor it killed.
KILL_SCRIPT = """
import json, sys, time
import ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
print("ready", flush=True)
sys.stdin.readline()
for index, deployment in enumerate(sys.argv[3:]):
    if index:
        time.sleep(float(sys.argv[2]))
    prefix = f"SERVE_REPLICA::feedbackbot#{deployment}#"
    names = [actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True) if actor["name"].startswith(prefix)]
    if names:
        ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
    print(json.dumps(names[:1]), flush=True)
"""


@dataclass
class LoadReport:
    sent: int = 0
    acknowledged: dict[str, str] = field(default_factory=dict)  # idempotency key -> feedback id
    retries: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    connection_errors: int = 0
    killed: list[str] = field(default_factory=list)
    without_sentiment: set[str] = field(default_factory=set)  # ids acknowledged before scoring


def load_underway(report: LoadReport, total: int, stop: threading.Event) -> bool:
    """Wait until a twentieth of the load is acknowledged; False when the load ended first."""
    while len(report.acknowledged) < total // 20:
        if stop.wait(0.05):
            return False
    return True


def kill_replicas(stack: Stack, report: LoadReport, total: int, stop: threading.Event) -> None:
    address = f"127.0.0.1:{stack.service.config.ports.ray_gcs}"
    command = [sys.executable, "-c", KILL_SCRIPT, address, str(KILL_INTERVAL_S), *KILL_ORDER]
    with subprocess.Popen(
        command,
        env=stack.service.ray_environment(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stdout.readline().strip() == "ready", process.stderr.read()[-2000:]
        if not load_underway(report, total, stop):
            process.kill()
            return

        process.stdin.write("go\n")
        process.stdin.flush()
        for line in process.stdout:
            report.killed.extend(json.loads(line))
        assert process.wait(timeout=120) == 0, process.stderr.read()[-2000:]


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
            body = response.json()
            earlier = report.acknowledged.setdefault(key, body["id"])
            assert earlier == body["id"], f"key {key} was acknowledged with two ids"
            if body["sentiment_status"] == "pending":
                report.without_sentiment.add(body["id"])
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
            "feedback_text": TEXTS[index % len(TEXTS)].format(index=index, run=run),
            "rating": RATINGS[index % len(RATINGS)],
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
    """Assert every payload was stored once, scored, and sent exactly the notifications it owes."""
    ids = list(report.acknowledged.values())
    assert len(report.acknowledged) == len(payloads), "some submissions were never acknowledged"
    assert len(set(ids)) == len(payloads), "two submissions were acknowledged with one id"

    stored = read_back(stack, report, payloads)
    owed_alerts = {
        feedback_id
        for feedback_id, record in stored.items()
        if record["rating"] <= ALERT_MAX_RATING or record["sentiment"]["label"] == "negative"
    }
    for key, feedback_id in report.acknowledged.items():
        stack.accepted[feedback_id] = {**payloads[key], "request_id": None}
        stack.chaos_ids.add(feedback_id)

    expected = set(ids)

    def delivered(mails) -> bool:
        confirmations, alerts = count_notifications(mails, expected)
        return set(confirmations) == expected and owed_alerts <= set(alerts)

    confirmations, alerts = count_notifications(stack.wait_for_mail(delivered, timeout_s=300.0), expected)
    with capsys.disabled():
        print(
            f"\n{run}: sent {report.sent}, acknowledged {len(ids)}, stored {len(stored)}, "
            f"duplicates {len(ids) - len(set(ids))}, lost {len(payloads) - len(stored)}, "
            f"stored before scoring {len(report.without_sentiment)}, retries {report.retries}, "
            f"connection errors {report.connection_errors}, statuses {dict(sorted(report.statuses.items()))}, "
            f"killed {report.killed}\n"
            f"{run}: notifications owed {len(expected)} confirmations + {len(owed_alerts)} admin alerts, "
            f"delivered {sum(confirmations.values())} confirmations + {sum(alerts.values())} admin alerts "
            f"({sum(1 for count in [*confirmations.values(), *alerts.values()] if count > 1)} more than once)"
        )
    assert set(alerts) == owed_alerts, "admin alerts went to feedback that does not owe one"


def read_back(stack: Stack, report: LoadReport, payloads: dict[str, dict]) -> dict[str, dict]:
    """Return every acknowledged feedback as the admin API shows it, once each has its sentiment."""
    deadline = time.monotonic() + 180.0
    stored: dict[str, dict] = {}
    with stack.client(stack.keys.admin) as client:
        for key, feedback_id in report.acknowledged.items():
            while True:
                response = client.get(f"/v1/feedback/{feedback_id}")
                if response.status_code == 429:
                    # Reading thousands of rows back outruns the admin key's rate limit.
                    time.sleep(float(response.headers.get("Retry-After", "1")))
                    continue
                assert response.status_code == 200, f"acknowledged feedback {feedback_id} is not stored"
                record = response.json()
                if record["sentiment_status"] == "done":
                    break
                assert time.monotonic() < deadline, f"feedback {feedback_id} was never scored"
                time.sleep(0.5)
            assert record["customer_name"] == payloads[key]["customer_name"]
            assert record["feedback_text"] == payloads[key]["feedback_text"]
            stored[feedback_id] = record
    return stored


def test_replica_kills_lose_nothing(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    report = LoadReport()
    payloads = make_payloads("replica-kill", SUBMISSIONS)

    run_load_during(stack, payloads, lambda stop: kill_replicas(stack, report, len(payloads), stop), report)

    assert len(report.killed) == len(KILL_ORDER), f"killed only {report.killed}"
    check_stored_once(stack, "replica-kill", payloads, report, capsys)


def test_mail_outage_under_load(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    report = LoadReport()
    payloads = make_payloads("mail-outage", SUBMISSIONS)
    sink_pid_file = stack.service.config.run_dir / "mailsink.pid"

    def stop_mail_sink(stop: threading.Event) -> None:
        if not load_underway(report, len(payloads), stop):
            return
        failures_before = len(sink_failures(stack))
        stack.service._stop_pid_file(sink_pid_file, "mail sink")
        try:
            # The senders may still work on older entries when the sink stops, so the outage
            # lasts until a send to the sink has failed, and a little longer.
            deadline = time.monotonic() + MAIL_OUTAGE_MAX_S
            while len(sink_failures(stack)) == failures_before and time.monotonic() < deadline:
                time.sleep(0.5)
            time.sleep(MAIL_OUTAGE_AFTER_FAILURE_S)
        finally:
            stack.service._start_mail_sink()

    run_load_during(stack, payloads, stop_mail_sink, report)

    check_stored_once(stack, "mail-outage", payloads, report, capsys)
    ids = set(report.acknowledged.values())
    failed = {line.split("for feedback ", 1)[1].split(" ", 1)[0] for line in sink_failures(stack)}
    assert failed & ids, "no send for this run failed, so the outage did not overlap the load"


def sink_failures(stack: Stack) -> list[str]:
    """Return the Notification log lines of failed sends to the mail sink (not to the dead target)."""
    return [
        line
        for line in stack.log_lines("Notification")
        if "Failed to send " in line and DEAD_TARGET_HOST not in line
    ]


def test_enrichment_failing_for_a_stretch(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    report = LoadReport()
    payloads = make_payloads("enrichment-drill", SUBMISSIONS)

    def fail_enrichment(stop: threading.Event) -> None:
        if not load_underway(report, len(payloads), stop):
            return
        stack.service.deploy({"Enrichment": {"failure_drill": "error"}}, wait=False)
        try:
            stop.wait(DRILL_S)
        finally:
            stack.service.deploy({"Enrichment": {"failure_drill": "off"}})

    run_load_during(stack, payloads, fail_enrichment, report)

    assert report.without_sentiment, "no submission was stored without sentiment during the drill"
    assert report.statuses.get(503, 0) == 0, "a failing model must not cost the client a 503"
    check_stored_once(stack, "enrichment-drill", payloads, report, capsys)


def test_app_restart_under_load(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    report = LoadReport()
    payloads = make_payloads("app-restart", SUBMISSIONS)

    def restart_application(stop: threading.Event) -> None:
        if not load_underway(report, len(payloads), stop):
            return
        stack.stop_graph()
        stack.service.deploy()
        stack.graph_stopped = False

    run_load_during(stack, payloads, restart_application, report)

    assert report.statuses.get(503, 0) > 0, "the restart produced no 503, so it did not overlap the load"
    check_stored_once(stack, "app-restart", payloads, report, capsys)
