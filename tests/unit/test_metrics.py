"""Application metrics: docs/operations.md lists each one, and every recording path sets its tags."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from feedbackbot import metrics
from feedbackbot.metrics import ALL_METRICS, MetricSpec

OPERATIONS_DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
# | `ray_feedbackbot_...` | counter | `endpoint`, `outcome` | meaning |
METRIC_ROW = re.compile(r"^\| `(?P<name>ray_feedbackbot_[a-z_]+)` \| (?P<kind>[a-z]+) \| (?P<labels>[^|]*) \|", re.M)
# Ray Serve adds these tags to every metric created in a replica.
SERVE_TAGS = {"deployment", "replica", "application"}


def documented_metrics() -> dict[str, tuple[str, set[str]]]:
    """Return exported name -> (kind, labels) from the metric table of docs/operations.md."""
    rows = {}
    for match in METRIC_ROW.finditer(OPERATIONS_DOC.read_text(encoding="utf-8")):
        labels = set(re.findall(r"`([a-z_]+)`", match["labels"]))
        rows[match["name"]] = (match["kind"], labels)
    return rows


@pytest.mark.parametrize("spec", ALL_METRICS, ids=lambda spec: spec.name)
def test_metric_documented(spec: MetricSpec) -> None:
    documented = documented_metrics()
    name = "ray_" + spec.name

    assert name in documented, f"{name} is missing from the metric table of {OPERATIONS_DOC}"
    kind, labels = documented[name]
    assert kind == spec.kind
    assert labels == set(spec.tag_keys) | SERVE_TAGS


def test_documented_metrics_exist() -> None:
    defined = {"ray_" + spec.name for spec in ALL_METRICS}

    assert set(documented_metrics()) - defined == set()


@pytest.mark.parametrize("spec", ALL_METRICS, ids=lambda spec: spec.name)
def test_metric_name_conventions(spec: MetricSpec) -> None:
    assert spec.name.startswith("feedbackbot_")
    # A counter without the suffix would also be exported as a deprecated gauge by Ray 2.60.
    assert spec.name.endswith("_total") == (spec.kind == "counter")
    assert not SERVE_TAGS & set(spec.tag_keys)
    assert spec.description


def test_metric_names_unique() -> None:
    names = [spec.name for spec in ALL_METRICS]

    assert len(names) == len(set(names))


def test_every_spec_listed() -> None:
    module_specs = {value for value in vars(metrics).values() if isinstance(value, MetricSpec)}

    assert module_specs == set(ALL_METRICS)


def test_histogram_exported_names() -> None:
    assert metrics.DUCKDB_COMMIT_SECONDS.exported_names == (
        "ray_feedbackbot_duckdb_commit_seconds_bucket",
        "ray_feedbackbot_duckdb_commit_seconds_sum",
        "ray_feedbackbot_duckdb_commit_seconds_count",
    )


class _Response:
    def __init__(self, status_code: int, headers: dict[str, str] | None = None) -> None:
        self.status_code = status_code
        self.headers = headers or {}


# Outside a replica Ray's metrics record nothing, but they still raise ValueError for
# missing or unknown tags, so these calls check the tags of every recording path.


@pytest.mark.parametrize(
    "response",
    [_Response(201), _Response(201, {"idempotent-replayed": "true"}), _Response(200), _Response(422), _Response(409), _Response(500)],
)
def test_ingest_metrics_tags(response: _Response) -> None:
    recorder = metrics.IngestMetrics()

    recorder.count_response("single", response)
    recorder.count_response("batch", response)


def test_ingest_batch_item_tags() -> None:
    metrics.IngestMetrics().count_batch_items(["created", "replayed", "rejected", "conflict", "created"])


def test_enrichment_metrics_tags() -> None:
    recorder = metrics.EnrichmentMetrics()

    recorder.observe_batch("serve_batch", 16)
    recorder.observe_batch("submitted_batch", 500)
    recorder.count_labels(["positive", "negative", "positive"])


def test_persistence_metrics_tags() -> None:
    recorder = metrics.PersistenceMetrics()

    recorder.observe_batch("serve_batch", 32)
    recorder.observe_commit("commit_submissions", 0.004)
    recorder.set_outbox_counts({"pending": 3, "sent": 10, "dead": 1})


def test_notification_metrics_tags() -> None:
    recorder = metrics.NotificationMetrics({"customer": "mailtos://user:secret@smtp.example.com?to=a@example.com"})

    recorder.count_sent("customer")
    recorder.count_failure("customer", "retry")
    recorder.count_failure("admin-unknown", "dead")


@pytest.mark.parametrize(("status", "reason"), sorted(metrics.REJECTION_REASONS.items()))
def test_rejection_reason_documented_code(status: int, reason: str) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")

    assert f"| {status} | `{reason}` |" in readme


def test_timed_call_returns_result_and_seconds() -> None:
    result, seconds = metrics.timed_call(lambda: 42)

    assert result == 42
    assert 0 <= seconds < 1
