"""Settings of the feedback graph, validated once when the application is built.

`AppSettings` contains the arguments of the application builder `graph:build_app`, set under
`applications[].args` in serve_config.yaml. Environment variables named `FEEDBACKBOT_` plus
the upper-case key override them, so secrets such as SMTP passwords stay out of the file.
`BatchSettings` and `EnrichmentSettings` are each deployment's `user_config`, which Serve
applies to running replicas without a restart.

Nothing here runs at import time, because Ray imports this module again in every replica.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Mapping, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from feedbackbot.errors import SettingsError
from feedbackbot.snapshot_settings import SnapshotSettings

ENV_PREFIX = "FEEDBACKBOT_"
HOME_ENV = "FEEDBACKBOT_HOME"

ModelT = TypeVar("ModelT", bound=BaseModel)


class NotifySettings(BaseModel):
    """Retry policy of the outbox sender: time limits, backoff and circuit breaker."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    notify_timeout_s: float = Field(
        default=10.0, gt=0, le=300, description="Time limit of one notification send, in seconds."
    )
    notify_max_attempts: int = Field(
        default=8, ge=1, le=100, description="Tries of one notification before its outbox entry is dead."
    )
    notify_backoff_base_s: float = Field(
        default=2.0, gt=0, description="Wait after the first failed try, in seconds; it doubles per try, with jitter."
    )
    notify_backoff_max_s: float = Field(
        default=600.0, gt=0, description="Maximum wait between two tries of one notification, in seconds."
    )
    notify_poll_interval_s: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="Maximum wait of an idle sender's claim for new outbox entries, in seconds. A commit ends the wait sooner.",
    )
    notify_claim_gather_s: float = Field(
        default=0.25,
        ge=0,
        le=5,
        description="Pause of a sender after a claim that was not full, in seconds, so that the next "
        "claim takes the entries of several commits at once. Each claim costs the database "
        "writer about as much as a commit, whatever its size.",
    )
    notify_cpu_priority: Literal["idle", "normal"] = Field(
        default="idle",
        description="CPU scheduling of each notification replica's sender: 'idle' (Linux "
        "SCHED_IDLE) lets accepting and scoring feedback go first when the CPU is fully busy, "
        "and the outbox holds the mail until load drops; 'normal' shares the CPU equally with "
        "the other replicas.",
    )
    notify_lease_s: float = Field(
        default=120.0,
        gt=0,
        description="Lease time of the entries a sender claims, in seconds. Entries of a sender "
        "that died are sent again after it, so keep it above notify_timeout_s.",
    )
    notify_circuit_failures: int = Field(
        default=5, ge=1, description="Failures in a row after which a target is skipped for a while."
    )
    notify_circuit_open_s: float = Field(
        default=60.0, gt=0, description="How long a failing target is skipped, in seconds."
    )


class StageTimeouts(BaseModel):
    """How long ingest waits for each deployment it calls."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    validation_timeout_s: float = Field(
        default=5.0, gt=0, le=300, description="Time limit of the validation call, in seconds; past it the client gets 503."
    )
    enrichment_timeout_s: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="Time limit of the sentiment call, in seconds. Past it, or when the model "
        "fails, the feedback is stored without sentiment and scored later.",
    )
    enrichment_batch_timeout_s: float = Field(
        default=60.0,
        gt=0,
        le=600,
        description="Time limit of the sentiment call for a submitted batch (up to 500 texts), in "
        "seconds. Past it the batch is stored without sentiment and scored later.",
    )
    persistence_timeout_s: float = Field(
        default=20.0,
        gt=0,
        le=300,
        description="Time limit of the commit call, in seconds; past it the client gets 503 and "
        "may retry with the same Idempotency-Key. Keep it below http_options.request_timeout_s.",
    )


class EnrichmentRetrySettings(BaseModel):
    """Late scoring: the persistence deployment's retries for rows stored without sentiment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enrichment_retry_interval_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="How often persistence looks for feedback stored without sentiment and has it scored, in seconds.",
    )
    enrichment_retry_batch_size: int = Field(
        default=64, ge=1, le=1024, description="Rows scored per look."
    )
    enrichment_max_attempts: int = Field(
        default=20,
        ge=1,
        le=1000,
        description="Failed tries after which a row stays without sentiment; /healthz counts such rows as given_up.",
    )


class RetentionSettings(BaseModel):
    """How long persistence keeps feedback, and what it does with older rows."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    retention_days: int = Field(
        default=0,
        ge=0,
        le=36_500,
        description="Age in days, by received_at, after which persistence deletes or anonymises "
        "feedback; 0 keeps feedback forever.",
    )
    retention_mode: Literal["delete", "anonymise"] = Field(
        default="delete",
        description="'delete' removes old feedback rows with their outbox entries; 'anonymise' "
        "sets customer_name, customer_email and feedback_text to NULL and keeps rating, "
        "sentiment and times.",
    )
    retention_interval_s: float = Field(
        default=3600.0,
        ge=1,
        le=7 * 86_400,
        description="How often persistence applies retention_days, in seconds; unused while retention_days is 0.",
    )


class AppSettings(NotifySettings, StageTimeouts, EnrichmentRetrySettings, SnapshotSettings, RetentionSettings):
    """Arguments of `graph:build_app`: where data lives, which model runs, where mail goes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    db_path: str = Field(
        default="data/feedback.duckdb",
        description="DuckDB file that the persistence deployment writes. A relative path is "
        "resolved against $FEEDBACKBOT_HOME, else the replica's working directory.",
    )
    sentiment_model: str = Field(
        default="builtin",
        description="'builtin' for the MiniLM encoder with the committed head, or the path of a "
        "local transformers sequence-classification model directory.",
    )
    idempotency_window_s: float = Field(
        default=86_400.0,
        gt=0,
        description="How long an Idempotency-Key is remembered, in seconds. A repeat within the "
        "window returns the original response instead of storing again.",
    )
    torch_threads: int = Field(
        default=1, ge=1, le=64, description="Threads that torch uses in each enrichment replica."
    )
    customer_notify_url: SecretStr | None = Field(
        default=None,
        description="Apprise URL for customer confirmations; the customer's address is added "
        "as its `to` parameter. Unset sends no confirmations.",
    )
    admin_notify_urls: list[SecretStr] = Field(
        default_factory=list,
        description="Apprise URLs that receive alerts for low ratings or negative sentiment. "
        "In the environment, separate several URLs with spaces.",
    )
    admin_alert_max_rating: int = Field(
        default=2, ge=1, le=5, description="Ratings at or below this value alert the admins."
    )

    def notify_settings(self) -> NotifySettings:
        """Return the sender's part of these settings."""
        return _part(self, NotifySettings)

    def stage_timeouts(self) -> StageTimeouts:
        """Return ingest's time limits for the calls it makes."""
        return _part(self, StageTimeouts)

    def enrichment_retry(self) -> EnrichmentRetrySettings:
        """Return the persistence deployment's settings for late scoring."""
        return _part(self, EnrichmentRetrySettings)

    def snapshots(self) -> SnapshotSettings:
        """Return the settings of the Parquet snapshots that persistence publishes."""
        return _part(self, SnapshotSettings)

    def retention(self) -> RetentionSettings:
        """Return the persistence deployment's retention settings."""
        return _part(self, RetentionSettings)

    def resolved_db_path(self) -> Path:
        """Return db_path as an absolute path."""
        return resolve_path(self.db_path)


class BatchSettings(BaseModel):
    """A batched deployment's `user_config`: how many calls one batch takes and waits for."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch_size: int = Field(
        default=16, ge=1, le=1024, description="Maximum number of calls in one batch."
    )
    batch_wait_timeout_s: float = Field(
        default=0.01, ge=0, le=5, description="Maximum wait for a batch to fill, in seconds."
    )


class IngestSettings(BatchSettings):
    """The ingest deployment's `user_config`: group size, and a wait that grows with load."""

    busy_batch_wait_timeout_s: float = Field(
        default=0.02,
        ge=0,
        le=5,
        description="Maximum wait for a group of single submissions to fill while at least busy_in_flight "
        "of them are in the replica, in seconds. Larger groups cost fewer calls per "
        "submission; under load a submission waits far longer for the model than for its group.",
    )
    busy_in_flight: int = Field(
        default=6,
        ge=1,
        le=100000,
        description="Single submissions in one ingest replica at or above which groups wait "
        "busy_batch_wait_timeout_s instead of batch_wait_timeout_s.",
    )


class EnrichmentSettings(BatchSettings):
    """The enrichment deployment's `user_config`: batching plus the neutral band."""

    model_batch_size: int = Field(
        default=8,
        ge=1,
        le=1024,
        description="Maximum number of texts in one forward pass of the model. A batch of calls is "
        "sorted by text length and split into forward passes of this size, because one long text "
        "pads every other text of its pass to its length.",
    )

    model_workers: int = Field(
        default=2,
        ge=1,
        le=16,
        description="Forward passes that one replica runs at the same time, each in its own thread "
        "with torch_threads threads. The length-sorted passes of a batch are dealt out among them.",
    )

    neutral_low: float = Field(
        default=0.35, ge=0, le=1, description="Scores below this are labelled negative."
    )
    neutral_high: float = Field(
        default=0.65, ge=0, le=1, description="Scores above this are labelled positive."
    )

    failure_drill: Literal["off", "error", "timeout"] = Field(
        default="off",
        description="Fault injection for failure drills: 'error' makes every batch fail and "
        "'timeout' makes it hang, so that operators can watch feedback being stored without "
        "sentiment and scored later. Keep 'off' outside drills.",
    )

    @model_validator(mode="after")
    def _check_band(self) -> "EnrichmentSettings":
        if self.neutral_low > self.neutral_high:
            raise ValueError(
                f"neutral_low ({self.neutral_low}) must not exceed neutral_high ({self.neutral_high})"
            )
        return self


def _part(settings: BaseModel, part: type[ModelT]) -> ModelT:
    return part(**{key: getattr(settings, key) for key in part.model_fields})


def load_settings(
    model: type[ModelT], values: Mapping[str, Any] | None, *, environ: Mapping[str, str] | None = None
) -> ModelT:
    """Validate `values` (plus `FEEDBACKBOT_*` overrides for AppSettings) into `model`.

    Raises SettingsError naming the first bad key, the expected type and the value.
    """
    merged = dict(values or {})
    if model is AppSettings:
        merged.update(_environment_overrides(environ if environ is not None else os.environ))

    try:
        return model.model_validate(merged)
    except ValidationError as error:
        first = error.errors()[0]
        key = ".".join(str(part) for part in first["loc"]) or model.__name__
        field = model.model_fields.get(str(first["loc"][0])) if first["loc"] else None
        if first["type"] == "extra_forbidden":
            expected = "one of " + ", ".join(model.model_fields)
        elif field is not None:
            expected = _type_name(field.annotation)
        else:
            expected = "a consistent combination of values"
        problem = first["msg"][0].lower() + first["msg"][1:]
        raise SettingsError(key, expected, first.get("input"), problem) from error


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("pydantic.types.", "")


def _environment_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for key, field in AppSettings.model_fields.items():
        raw = environ.get(ENV_PREFIX + key.upper())
        if raw is None:
            continue
        if field.annotation == list[SecretStr]:
            overrides[key] = raw.split()
        else:
            overrides[key] = raw
    return overrides


def resolve_path(path: str) -> Path:
    """Resolve a relative path against $FEEDBACKBOT_HOME, else the working directory."""
    candidate = Path(path).expanduser()
    if candidate.is_absolute():
        return candidate
    base = os.environ.get(HOME_ENV) or os.getcwd()
    return Path(base) / candidate
