"""Metrics, JSON logs and liveness and readiness routes of a running stack."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from feedbackbot.metrics import ALL_METRICS
from tests.integration.conftest import ADMIN_ADDRESS, Stack, mail_text

pytestmark = pytest.mark.integration

DEPLOYMENTS = ("Ingest", "Validation", "Enrichment", "Persistence", "Notification")
# Ray's metrics agent collects from the workers every few seconds, and persistence updates
# the outbox gauge every 10 s.
METRICS_TIMEOUT_S = 120.0

# Kills every replica of one deployment, the way the chaos tests kill one, and prints their names.
KILL_SCRIPT = """
import json, sys
import ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
prefix = f"SERVE_REPLICA::feedbackbot#{sys.argv[2]}#"
names = [actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True) if actor["name"].startswith(prefix)]
for name in names:
    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
print(json.dumps(names), flush=True)
"""


@dataclass(frozen=True)
class Submitted:
    """One stored feedback with a low rating, so it owes a confirmation and admin alerts."""

    request_id: str
    feedback_id: str
    email: str
    text: str


Samples = dict[str, list[tuple[dict[str, str], float]]]


@pytest.fixture(scope="module")
def submitted(stack: Stack) -> Submitted:
    marker = uuid.uuid4().hex
    payload = {
        "customer_name": "Grace Observed",
        "customer_email": f"grace.{marker[:10]}@example.com",
        "feedback_text": f"The tracking page was broken and support never answered. [observability {marker}]",
        "rating": 1,
    }
    request_id = "obs-" + marker
    invalid_marker = f"Invalid {marker}"

    with stack.client(stack.keys.submit) as client:
        response = client.post("/v1/feedback", json=payload, headers={"X-Request-ID": request_id})
        rejected = client.post("/v1/feedback", json={**payload, "customer_name": invalid_marker, "rating": 9})

    assert response.status_code == 201, response.text
    assert rejected.status_code == 422, rejected.text
    feedback_id = response.json()["id"]
    stack.accepted[feedback_id] = {**payload, "request_id": request_id}
    stack.rejected_markers.append(invalid_marker)

    # The confirmation and the alert reach the sink only after the notification replica sent them.
    stack.wait_for_mail(lambda mails: any(feedback_id in mail_text(mail) and mail["To"] == payload["customer_email"] for mail in mails))
    stack.wait_for_mail(lambda mails: any(mail["To"] == ADMIN_ADDRESS and feedback_id in mail["Subject"] for mail in mails))
    return Submitted(request_id, feedback_id, payload["customer_email"], payload["feedback_text"])


def scrape(stack: Stack) -> Samples:
    """Return every sample of the metrics endpoint as name -> [(labels, value)]."""
    response = httpx.get(stack.service.config.metrics_url, timeout=10.0)
    response.raise_for_status()
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    """Return the sum of the samples of `name` whose labels include `labels`."""
    return sum(value for tags, value in samples.get(name, []) if labels.items() <= tags.items())


def bucket_counts(samples: Samples, histogram: str, **labels: str) -> dict[float, float]:
    """Return the cumulative count of each bucket bound of a histogram, summed over matching series."""
    counts: dict[float, float] = {}
    for tags, value in samples.get(histogram + "_bucket", []):
        if labels.items() <= tags.items():
            bound = float(tags["le"])
            counts[bound] = counts.get(bound, 0.0) + value
    return counts


def wait_for_metrics(stack: Stack, ready, timeout_s: float = METRICS_TIMEOUT_S) -> Samples:
    """Scrape until `ready(samples)` is true; fail with the feedbackbot samples at the deadline."""
    deadline = time.monotonic() + timeout_s
    samples: Samples = {}
    while time.monotonic() < deadline:
        samples = scrape(stack)
        if ready(samples):
            return samples
        time.sleep(1.0)
    ours = {name: values for name, values in samples.items() if "feedbackbot" in name}
    pytest.fail(f"The metrics did not reach the expected values within {timeout_s:.0f} s; feedbackbot samples: {ours}")


def json_lines(lines: list[str]) -> list[dict]:
    """Return the log lines that are JSON objects, parsed."""
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def wait_for_request_lines(stack: Stack, deployment: str, request_id: str, timeout_s: float = 60.0) -> list[dict]:
    """Return the JSON log lines of `deployment` for the request, once one names a feedback id."""
    deadline = time.monotonic() + timeout_s
    matching: list[dict] = []
    while time.monotonic() < deadline:
        matching = [record for record in json_lines(stack.log_lines(deployment)) if record.get("request_id") == request_id]
        if any("feedback_id" in record for record in matching):
            return matching
        time.sleep(0.5)
    pytest.fail(f"No {deployment} JSON log line with request_id {request_id} and a feedback_id within {timeout_s:.0f} s: {matching}")


def test_metrics_endpoint_has_app_metrics(stack: Stack, submitted: Submitted) -> None:
    def ready(samples: Samples) -> bool:
        return (
            total(samples, "ray_feedbackbot_submissions_accepted_total", endpoint="single", outcome="created") >= 1
            and total(samples, "ray_feedbackbot_outbox_entries", status="sent") >= 1
            and total(samples, "ray_feedbackbot_delivery_failures_total") >= 1
        )

    samples = wait_for_metrics(stack, ready)

    assert total(samples, "ray_feedbackbot_submissions_rejected_total", endpoint="single", reason="validation_failed") >= 1
    assert total(samples, "ray_feedbackbot_sentiment_labels_total") >= 1
    assert set(tags["label"] for tags, _ in samples["ray_feedbackbot_sentiment_labels_total"]) <= {"negative", "neutral", "positive"}
    # Ray 2.60 estimates a histogram's _sum from bucket midpoints, so the checks use buckets.
    for histogram in ("ray_feedbackbot_enrichment_batch_size", "ray_feedbackbot_persistence_batch_size"):
        count = total(samples, histogram + "_count")
        buckets = bucket_counts(samples, histogram)
        assert count >= 1
        assert buckets[float("inf")] == count
        assert buckets[1024.0] == count, f"{histogram}: a batch larger than the 1024 limit: {buckets}"
    commits = total(samples, "ray_feedbackbot_duckdb_commit_seconds_count", operation="commit_submissions")
    assert commits >= 1
    assert bucket_counts(samples, "ray_feedbackbot_duckdb_commit_seconds", operation="commit_submissions")[10.0] == commits
    assert total(samples, "ray_feedbackbot_notifications_sent_total", target="customer") >= 1
    # Serve's own metrics come from the same endpoint.
    assert any(name.startswith("ray_serve_") for name in samples)


def test_metrics_carry_serve_tags(stack: Stack, submitted: Submitted) -> None:
    samples = wait_for_metrics(stack, lambda found: "ray_feedbackbot_submissions_accepted_total" in found)

    tags, _ = samples["ray_feedbackbot_submissions_accepted_total"][0]
    assert tags["deployment"] == "Ingest"
    assert tags["application"] == "feedbackbot"
    assert tags["replica"]


def test_every_metric_exported(stack: Stack, submitted: Submitted) -> None:
    def ready(samples: Samples) -> bool:
        return all(name in samples for spec in ALL_METRICS for name in spec.exported_names)

    samples = wait_for_metrics(stack, ready)

    assert all(name in samples for spec in ALL_METRICS for name in spec.exported_names)


def test_target_urls_masked_in_metrics(stack: Stack, submitted: Submitted) -> None:
    samples = wait_for_metrics(stack, lambda found: total(found, "ray_feedbackbot_delivery_failures_total") >= 1)

    urls = {
        tags["target_url"]
        for name in ("ray_feedbackbot_delivery_failures_total", "ray_feedbackbot_notifications_sent_total")
        for tags, _ in samples.get(name, [])
    }
    assert urls
    for url in urls:
        assert url == "mailto://127.0.0.1", url
    outcomes = {tags["outcome"] for tags, _ in samples["ray_feedbackbot_delivery_failures_total"]}
    assert outcomes <= {"retry", "dead"}


@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_json_log_lines_name_request(stack: Stack, submitted: Submitted, deployment: str) -> None:
    records = wait_for_request_lines(stack, deployment, submitted.request_id)

    named = [record for record in records if "feedback_id" in record]
    assert {record["feedback_id"] for record in named} == {submitted.feedback_id}
    for record in records:
        # Serve names the deployment with its application as prefix.
        assert record["deployment"] == f"feedbackbot_{deployment}"
        assert record["replica"]
        assert record["levelname"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
        assert record["asctime"]
        assert record["timestamp_ns"] > 0


def test_logs_hide_customer_email_and_text(stack: Stack, submitted: Submitted) -> None:
    for deployment in DEPLOYMENTS:
        wait_for_request_lines(stack, deployment, submitted.request_id)
    logs = stack.service.config.ray_temp_dir / "session_latest" / "logs"

    leaks = []
    for path in sorted(Path(logs).rglob("*")):
        if not path.is_file():
            continue
        content = path.read_text(encoding="utf-8", errors="replace")
        if submitted.email in content:
            leaks.append(f"{path.name}: customer email")
        if submitted.text in content:
            leaks.append(f"{path.name}: feedback text")

    assert leaks == []


def test_livez_without_key(stack: Stack) -> None:
    with stack.client() as client:
        response = client.get("/livez")

    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ok"}
    assert response.headers["X-Request-ID"]


def test_readyz_every_deployment_ready(stack: Stack) -> None:
    with stack.client() as client:
        response = client.get("/readyz")

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ready"
    assert set(body["deployments"]) == {"ingest", "validation", "enrichment", "persistence", "notification"}
    for name, part in body["deployments"].items():
        assert part["live"] is True, name
        assert part["ready"] is True, name
    assert body["deployments"]["enrichment"]["model_version"]


def test_healthz_still_answers(stack: Stack) -> None:
    with stack.client() as client:
        response = client.get("/healthz")

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "ok"


def poll_readyz(stack: Stack, status: int, timeout_s: float) -> httpx.Response:
    """Return the first /readyz response with `status`; fail at the deadline."""
    deadline = time.monotonic() + timeout_s
    last = None
    with stack.client() as client:
        while time.monotonic() < deadline:
            last = client.get("/readyz")
            if last.status_code == status:
                return last
            time.sleep(0.2)
    pytest.fail(f"/readyz did not answer {status} within {timeout_s:.0f} s; last answer: {last.status_code if last else None} {last.text if last else ''}")


def test_readyz_names_killed_deployment(stack: Stack) -> None:
    address = f"127.0.0.1:{stack.service.config.ports.ray_gcs}"
    result = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, address, "Enrichment"],
        env=stack.service.ray_environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]), "no Enrichment replica was found to kill"

    try:
        response = poll_readyz(stack, 503, timeout_s=30.0)
        body = response.json()
        assert body["status"] == "not_ready"
        assert "enrichment" in body["failing"]
        assert body["deployments"]["enrichment"]["ready"] is False
        assert body["deployments"]["enrichment"]["reason"]
        assert response.headers["Retry-After"]
    finally:
        # Serve replaces the replica; later tests need the model back.
        poll_readyz(stack, 200, timeout_s=240.0)
