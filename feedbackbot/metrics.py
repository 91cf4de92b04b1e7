"""Application metrics of the Serve deployments, exported through Ray's Prometheus endpoint.

Ray's metrics agent serves every metric of a node on its metrics export port
(`Ports.metrics_export`), with the prefix `ray_`. `ray.serve.metrics` adds the tags
`deployment`, `replica` and `application` to each metric created inside a replica.
docs/operations.md lists every metric of `ALL_METRICS`; a unit test checks that.

The specs below are plain data. The Ray metric objects are created in each replica's
`__init__` through the `*Metrics` classes, because they register with the replica's
Ray worker and must not be built at import time. The deployments import these classes
from this module, so Serve pickles them by reference.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Literal, Protocol, TypeVar

from ray.serve.metrics import Counter, Gauge, Histogram

from feedbackbot.redact import mask_target_url

ResultT = TypeVar("ResultT")
MetricKind = Literal["counter", "gauge", "histogram"]
Endpoint = Literal["single", "batch"]

# Batch sizes go up to 500 (a submitted batch) and 1024 (the max_batch_size limit).
BATCH_SIZE_BOUNDARIES = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0)
COMMIT_SECONDS_BOUNDARIES = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# The error codes of the README's table by status, which map one to one in the graph.
REJECTION_REASONS = {
    404: "not_found",
    409: "idempotency_conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_failed",
    503: "unavailable",
}


@dataclass(frozen=True)
class MetricSpec:
    """Name, type, description and tag keys of one application metric."""

    name: str
    kind: MetricKind
    description: str
    tag_keys: tuple[str, ...] = ()
    boundaries: tuple[float, ...] = ()

    @property
    def exported_names(self) -> tuple[str, ...]:
        """Return the names under which Ray exports this metric to Prometheus."""
        name = "ray_" + self.name
        if self.kind == "histogram":
            return (name + "_bucket", name + "_sum", name + "_count")
        return (name,)


SUBMISSIONS_ACCEPTED = MetricSpec(
    "feedbackbot_submissions_accepted_total",
    "counter",
    "Submissions answered with a stored row: created now, or replayed for a repeated Idempotency-Key.",
    ("endpoint", "outcome"),
)
SUBMISSIONS_REJECTED = MetricSpec(
    "feedbackbot_submissions_rejected_total",
    "counter",
    "Submissions that were not stored, by the error code of the answer.",
    ("endpoint", "reason"),
)
SENTIMENT_LABELS = MetricSpec(
    "feedbackbot_sentiment_labels_total",
    "counter",
    "Texts scored by the sentiment model, by label.",
    ("label",),
)
ENRICHMENT_BATCH_SIZE = MetricSpec(
    "feedbackbot_enrichment_batch_size",
    "histogram",
    "Texts per model call.",
    ("source",),
    BATCH_SIZE_BOUNDARIES,
)
PERSISTENCE_BATCH_SIZE = MetricSpec(
    "feedbackbot_persistence_batch_size",
    "histogram",
    "Feedback rows per DuckDB transaction of the submission paths.",
    ("source",),
    BATCH_SIZE_BOUNDARIES,
)
DUCKDB_COMMIT_SECONDS = MetricSpec(
    "feedbackbot_duckdb_commit_seconds",
    "histogram",
    "Time of one DuckDB write transaction on the writer thread, without the wait for that thread.",
    ("operation",),
    COMMIT_SECONDS_BOUNDARIES,
)
OUTBOX_ENTRIES = MetricSpec(
    "feedbackbot_outbox_entries",
    "gauge",
    "Outbox entries by status, counted by persistence every 10 s and at each /healthz.",
    ("status",),
)
NOTIFICATIONS_SENT = MetricSpec(
    "feedbackbot_notifications_sent_total",
    "counter",
    "Notifications delivered, by target id and masked target URL.",
    ("target", "target_url"),
)
DELIVERY_FAILURES = MetricSpec(
    "feedbackbot_delivery_failures_total",
    "counter",
    "Failed notification sends, by target id, masked target URL and what happens next (retry or dead).",
    ("target", "target_url", "outcome"),
)

ALL_METRICS = (
    SUBMISSIONS_ACCEPTED,
    SUBMISSIONS_REJECTED,
    SENTIMENT_LABELS,
    ENRICHMENT_BATCH_SIZE,
    PERSISTENCE_BATCH_SIZE,
    DUCKDB_COMMIT_SECONDS,
    OUTBOX_ENTRIES,
    NOTIFICATIONS_SENT,
    DELIVERY_FAILURES,
)

# How often persistence counts the outbox for the OUTBOX_ENTRIES gauge; its description and
# docs/operations.md state this interval.
OUTBOX_GAUGE_INTERVAL_S = 10.0


def create_metric(spec: MetricSpec) -> Counter | Gauge | Histogram:
    """Create the Ray Serve metric of a spec; call it inside a replica."""
    if spec.kind == "counter":
        return Counter(spec.name, description=spec.description, tag_keys=spec.tag_keys)
    if spec.kind == "gauge":
        return Gauge(spec.name, description=spec.description, tag_keys=spec.tag_keys)
    return Histogram(
        spec.name, description=spec.description, boundaries=list(spec.boundaries), tag_keys=spec.tag_keys
    )


def timed_call(function: Callable[[], ResultT]) -> tuple[ResultT, float]:
    """Call `function` and return its result with the seconds it took."""
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


class _Response(Protocol):
    status_code: int
    headers: dict[str, str]


class IngestMetrics:
    """Counts of accepted and rejected submissions, recorded by the ingest replica."""

    def __init__(self) -> None:
        self._accepted = create_metric(SUBMISSIONS_ACCEPTED)
        self._rejected = create_metric(SUBMISSIONS_REJECTED)

    def count_response(self, endpoint: Endpoint, response: _Response) -> None:
        """Count one response of a submit route.

        A 201 of the single route counts as created or replayed. An error counts once under
        its code, also for a batch that was rejected as a whole, because its items are
        unknown then. `count_batch_items` counts the items of a batch that got a 200.
        """
        status = response.status_code
        if status == 201:
            replayed = response.headers.get("idempotent-replayed") == "true"
            self._accepted.inc(tags={"endpoint": endpoint, "outcome": "replayed" if replayed else "created"})
        elif status >= 400:
            reason = REJECTION_REASONS.get(status, f"http_{status}")
            self._rejected.inc(tags={"endpoint": endpoint, "reason": reason})

    def count_batch_items(self, statuses: Iterable[str]) -> None:
        """Count the items of a processed batch by their status (created, replayed, rejected, conflict)."""
        for status, count in collections.Counter(statuses).items():
            if status in ("created", "replayed"):
                self._accepted.inc(count, tags={"endpoint": "batch", "outcome": status})
            elif status == "conflict":
                self._rejected.inc(count, tags={"endpoint": "batch", "reason": "idempotency_conflict"})
            else:
                self._rejected.inc(count, tags={"endpoint": "batch", "reason": "validation_failed"})


class EnrichmentMetrics:
    """Model batch sizes and sentiment labels, recorded by an enrichment replica."""

    def __init__(self) -> None:
        self._batch_size = create_metric(ENRICHMENT_BATCH_SIZE)
        self._labels = create_metric(SENTIMENT_LABELS)

    def observe_batch(self, source: Literal["serve_batch", "submitted_batch"], size: int) -> None:
        """Record one model call: `serve_batch` groups concurrent single calls, `submitted_batch` is analyze_many."""
        self._batch_size.observe(size, tags={"source": source})

    def count_labels(self, labels: Iterable[str]) -> None:
        for label, count in collections.Counter(labels).items():
            self._labels.inc(count, tags={"label": label})


class PersistenceMetrics:
    """Batch sizes, DuckDB commit times and the outbox gauge, recorded by the persistence replica."""

    def __init__(self) -> None:
        self._batch_size = create_metric(PERSISTENCE_BATCH_SIZE)
        self._commit_seconds = create_metric(DUCKDB_COMMIT_SECONDS)
        self._outbox = create_metric(OUTBOX_ENTRIES)

    def observe_batch(self, source: Literal["serve_batch", "submitted_batch"], size: int) -> None:
        """Record the rows of one submission transaction: grouped single calls, or a submitted batch."""
        self._batch_size.observe(size, tags={"source": source})

    def observe_commit(self, operation: str, seconds: float) -> None:
        self._commit_seconds.observe(seconds, tags={"operation": operation})

    def set_outbox_counts(self, counts: dict[str, int]) -> None:
        for status, count in counts.items():
            self._outbox.set(count, tags={"status": status})


class NotificationMetrics:
    """Sent and failed notifications per target, recorded by a notification replica.

    Target URLs appear only masked (`mask_target_url`), so no credential, token or
    recipient address reaches the metrics.
    """

    def __init__(self, urls_by_target: dict[str, str]) -> None:
        self._sent = create_metric(NOTIFICATIONS_SENT)
        self._failures = create_metric(DELIVERY_FAILURES)
        self._masked = {target: mask_target_url(url) for target, url in urls_by_target.items()}

    def count_sent(self, target: str) -> None:
        self._sent.inc(tags={"target": target, "target_url": self._masked.get(target, "unknown")})

    def count_failure(self, target: str, outcome: Literal["retry", "dead"]) -> None:
        tags = {"target": target, "target_url": self._masked.get(target, "unknown"), "outcome": outcome}
        self._failures.inc(tags=tags)
