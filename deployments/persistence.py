"""Persistence deployment: the single DuckDB writer, committing in batches.

It also scores the feedback that ingest stored without sentiment because the model failed
or timed out. Every `enrichment_retry_interval_s` it sends such rows to the enrichment
deployment. It stores each result in one transaction with any admin alert that the
sentiment now calls for.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, TypeVar
from uuid import UUID

import ray.exceptions
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from feedbackbot.errors import EnrichmentError, SnapshotError, StoreError, error_summary
from feedbackbot.logcontext import as_request
from feedbackbot.metrics import OUTBOX_GAUGE_INTERVAL_S, PersistenceMetrics, timed_call
from feedbackbot.notify import NotificationPolicy
from feedbackbot.settings import BatchSettings, EnrichmentRetrySettings, RetentionSettings, load_settings, resolve_path
from feedbackbot.snapshot_settings import SnapshotSettings
from feedbackbot.snapshots import SnapshotPublisher
from feedbackbot.store import FeedbackStore
from models.feedback import (
    AcceptedSubmission,
    ClaimedNotification,
    DeliveryResult,
    FeedbackRecord,
    IdempotencyClaim,
    OutboxEntry,
    OwedNotification,
    Sentiment,
    StoreOutcome,
)
from models.privacy import ErasureResult, PrivacyExport, RetentionResult
from models.listing import DailyVolume, FeedbackQuery

logger = logging.getLogger("ray.serve")

ResultT = TypeVar("ResultT")

PURGE_INTERVAL_S = 600.0
LATE_SCORING_TIMEOUT_S = 60.0



@serve.deployment
class Persistence:
    """Owns the DuckDB file. Runs as exactly one replica, because DuckDB allows one writer."""

    async def __init__(
        self,
        db_path: str,
        idempotency_window_s: float,
        policy: NotificationPolicy,
        enrichment: DeploymentHandle,
        retry: EnrichmentRetrySettings,
        snapshots: SnapshotSettings,
        retention: RetentionSettings | None = None,
    ) -> None:
        path = resolve_path(db_path)
        self._idempotency_window_s = idempotency_window_s
        self._policy = policy
        self._enrichment = enrichment
        self._retry = retry
        self._next_purge = 0.0
        self._metrics = PersistenceMetrics()
        # Set whenever a commit adds or requeues outbox entries; wakes senders that wait in
        # claim_notifications.
        self._outbox_changed = asyncio.Event()
        # One thread runs every DuckDB call, since a DuckDB connection must not be used
        # from two threads at once.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="duckdb")
        self._store = await self._run(FeedbackStore.open, path)
        logger.info("Opened the feedback database %s with %d rows", path, await self._run(self._store.count))

        self._scorer = asyncio.get_running_loop().create_task(self._score_pending_forever())
        self._scorer.add_done_callback(self._report_scorer_exit)

        self._snapshot_dir = resolve_path(snapshots.snapshot_dir)
        self._publisher = await self._run(SnapshotPublisher.open, snapshots)
        self._publisher.start_compaction()
        self._last_publish_error: str | None = None
        self._publishing = asyncio.get_running_loop().create_task(self._publish_forever())
        self._outbox_gauge = asyncio.get_running_loop().create_task(self._count_outbox_forever())

        self._retention = retention or RetentionSettings()
        self._retaining: asyncio.Task[None] | None = None
        if self._retention.retention_days > 0:
            self._retaining = asyncio.get_running_loop().create_task(self._retain_forever())

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply batch size and batch wait from user_config without a restart."""
        settings = load_settings(BatchSettings, user_config)
        self._commit_batch.set_max_batch_size(settings.max_batch_size)
        self._commit_batch.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)
        logger.info("Applied persistence settings %s", settings.model_dump())

    async def store(self, accepted: AcceptedSubmission, sentiment: Sentiment | None) -> StoreOutcome:
        """Commit one feedback row, or find the original of a repeated Idempotency-Key.

        `sentiment` is None when enrichment failed; the row is then scored later. Returns
        only after the commit.
        """
        record = self._record(accepted, sentiment)
        outcome = await self._commit_batch((record, accepted.idempotency, self._policy.owed(record)))
        if outcome.status == "created":
            logger.info("Committed feedback %s", record.id, extra={"feedback_id": str(record.id)})
        return outcome

    async def store_each(self, items: list[tuple[AcceptedSubmission, Sentiment | None]]) -> list[StoreOutcome]:
        """Commit a group of concurrent single submissions, in order; returns after the commits.

        Ingest groups them to save calls. The items join the same transactions as `store`
        calls, and each log line carries its own item's request id.
        """

        async def store_one(accepted: AcceptedSubmission, sentiment: Sentiment | None) -> StoreOutcome:
            with as_request(accepted.request_id):
                return await self.store(accepted, sentiment)

        return list(await asyncio.gather(*(store_one(accepted, sentiment) for accepted, sentiment in items)))

    def _record(self, accepted: AcceptedSubmission, sentiment: Sentiment | None) -> FeedbackRecord:
        submission = accepted.submission
        record = FeedbackRecord(
            id=accepted.id,
            received_at=accepted.received_at,
            request_id=accepted.request_id,
            customer_name=submission.customer_name,
            customer_email=submission.customer_email,
            feedback_text=submission.feedback_text,
            rating=submission.rating,
        )
        return record if sentiment is None else record.with_sentiment(sentiment)

    async def store_many(self, items: list[tuple[AcceptedSubmission, Sentiment | None]]) -> list[StoreOutcome]:
        """Commit the items of a submitted batch in one transaction; returns after the commit."""
        now = datetime.now(timezone.utc)
        entries = []
        for accepted, sentiment in items:
            record = self._record(accepted, sentiment)
            entries.append((record, accepted.idempotency, self._policy.owed(record)))

        outcomes = await self._run_timed(
            "commit_submissions",
            lambda: self._store.commit_submissions(entries, now=now, idempotency_window_s=self._idempotency_window_s),
        )
        self._metrics.observe_batch("submitted_batch", len(entries))
        created = sum(1 for outcome in outcomes if outcome.status == "created")
        logger.info("Committed %d feedback row(s) of a submitted batch of %d", created, len(items))
        if created:
            self._outbox_changed.set()
        return outcomes

    async def find_claims(self, claims: list[IdempotencyClaim]) -> list[StoreOutcome | None]:
        """Return the outcome of an earlier use of each Idempotency-Key, or None, in order."""
        now = datetime.now(timezone.utc)
        window_s = self._idempotency_window_s
        return await self._run(lambda: self._store.find_claims(claims, now=now, idempotency_window_s=window_s))

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _commit_batch(
        self, items: list[tuple[FeedbackRecord, IdempotencyClaim | None, list[OwedNotification]]]
    ) -> list[StoreOutcome]:
        now = datetime.now(timezone.utc)
        outcomes = await self._run_timed(
            "commit_submissions",
            lambda: self._store.commit_submissions(items, now=now, idempotency_window_s=self._idempotency_window_s),
        )
        self._metrics.observe_batch("serve_batch", len(items))
        created = sum(1 for outcome in outcomes if outcome.status == "created")
        logger.info("Committed %d feedback row(s) of a batch of %d", created, len(items))
        if created:
            self._outbox_changed.set()
        await self._purge_when_due(now)
        return outcomes

    async def _purge_when_due(self, now: datetime) -> None:
        if time.monotonic() < self._next_purge:
            return
        self._next_purge = time.monotonic() + PURGE_INTERVAL_S
        older_than = now - timedelta(seconds=self._idempotency_window_s)
        deleted = await self._run(lambda: self._store.purge_idempotency_keys(older_than=older_than))
        if deleted:
            logger.info("Purged %d expired Idempotency-Key(s)", deleted)

    async def _score_pending_forever(self) -> None:
        """Score the rows stored without sentiment, until the replica stops."""
        logger.info("Started late scoring every %.0f s", self._retry.enrichment_retry_interval_s)
        while True:
            try:
                full_batch = await self._score_pending_once()
            except StoreError as error:
                logger.error("Late scoring failed to read or write the database: %s", error_summary(error))
                full_batch = False
            if not full_batch:
                await asyncio.sleep(self._retry.enrichment_retry_interval_s)

    async def _publish_forever(self) -> None:
        """Publish a snapshot for readers every snapshot_publish_interval_s, until the replica stops."""
        interval_s = self._publisher.settings.snapshot_publish_interval_s
        logger.info("Started publishing snapshots to %s every %.1f s", self._snapshot_dir, interval_s)
        while True:
            await self._publish_once()
            await asyncio.sleep(interval_s)

    async def _publish_once(self) -> None:
        try:
            # The store's thread runs the publish between two transactions, so it reads only committed rows.
            await self._run(self._store.publish_snapshot, self._publisher)
        except SnapshotError as error:
            self._last_publish_error = error_summary(error)
            logger.error("Failed to publish a snapshot, retrying at the next interval: %s", self._last_publish_error)
            return
        self._last_publish_error = None

    async def _count_outbox_forever(self) -> None:
        """Update the outbox gauge every OUTBOX_GAUGE_INTERVAL_S, until the replica stops."""
        while True:
            try:
                counts = await self._run(self._store.outbox_counts)
            except StoreError as error:
                logger.error("Failed to count the outbox for the metrics, retrying at the next interval: %s", error_summary(error))
            else:
                self._metrics.set_outbox_counts(counts)
            await asyncio.sleep(OUTBOX_GAUGE_INTERVAL_S)

    def _report_scorer_exit(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            logger.info("Stopped late scoring")
            return
        error = task.exception()
        logger.error("Late scoring stopped on an unexpected error; /healthz reports it", exc_info=error)

    async def _score_pending_once(self) -> bool:
        """Score one batch of rows without sentiment; return True when the batch was full."""
        limit = self._retry.enrichment_retry_batch_size
        pending = await self._run(
            lambda: self._store.pending_enrichment(limit=limit, max_attempts=self._retry.enrichment_max_attempts)
        )
        if not pending:
            return False

        calls = [
            asyncio.wait_for(self._analyze(record), LATE_SCORING_TIMEOUT_S) for record in pending
        ]
        results = await asyncio.gather(*calls, return_exceptions=True)

        scored, failed, errors = [], [], []
        for record, result in zip(pending, results):
            if isinstance(result, Sentiment):
                enriched = record.with_sentiment(result)
                scored.append((enriched, self._policy.owed_after_enrichment(enriched)))
            elif isinstance(result, (EnrichmentError, BackPressureError, ray.exceptions.RayError, asyncio.TimeoutError)):
                failed.append(record.id)
                errors.append(error_summary(result))
            else:
                raise result

        now = datetime.now(timezone.utc)
        if scored:
            updated = await self._run_timed("complete_enrichment", lambda: self._store.complete_enrichment(scored, now=now))
            alerts = sum(len(owed) for _, owed in scored)
            logger.info("Scored %d feedback row(s) stored without sentiment; %d new admin alert(s)", updated, alerts)
            if alerts:
                self._outbox_changed.set()
        if failed:
            await self._run(lambda: self._store.record_enrichment_failure(failed, error_text=errors[0]))
            logger.warning("Failed to score %d feedback row(s) stored without sentiment: %s", len(failed), errors[0])
            return False
        return len(pending) == limit

    async def _analyze(self, record: FeedbackRecord) -> Sentiment:
        return await self._enrichment.analyze.remote(record.feedback_text, record.id)

    async def claim_notifications(
        self, limit: int, lease_s: float, skip_targets: list[str] | None = None, wait_s: float = 0.0
    ) -> list[ClaimedNotification]:
        """Lease due outbox entries to the calling sender, except those for `skip_targets`.

        When none is due, waits up to `wait_s` seconds for a commit that adds or requeues
        entries and tries once more, so that senders need no wake-up call per submission.
        """
        self._outbox_changed.clear()
        claimed = await self._claim(limit, lease_s, skip_targets or [])
        if claimed or wait_s <= 0:
            return claimed

        try:
            await asyncio.wait_for(self._outbox_changed.wait(), wait_s)
        except asyncio.TimeoutError:
            pass  # Nothing was committed meanwhile; entries whose retry time came are claimed now.
        return await self._claim(limit, lease_s, skip_targets or [])

    async def _claim(self, limit: int, lease_s: float, skip_targets: list[str]) -> list[ClaimedNotification]:
        now = datetime.now(timezone.utc)
        return await self._run_timed(
            "claim_notifications",
            lambda: self._store.claim_notifications(now=now, limit=limit, lease_s=lease_s, skip_targets=skip_targets),
        )

    async def finish_notifications(self, results: list[DeliveryResult]) -> None:
        """Record what a sender did with the entries it leased."""
        now = datetime.now(timezone.utc)
        await self._run_timed("finish_notifications", lambda: self._store.finish_notifications(results, now=now))

    async def list_outbox(self, status: str, limit: int) -> list[OutboxEntry]:
        return await self._run(lambda: self._store.list_outbox(status=status, limit=limit))

    async def requeue_notification(self, entry_id: UUID) -> OutboxEntry | None:
        now = datetime.now(timezone.utc)
        entry = await self._run(lambda: self._store.requeue_notification(entry_id, now=now))
        if entry is not None:
            logger.info("Requeued dead outbox entry %s for feedback %s", entry.id, entry.feedback_id)
            self._outbox_changed.set()
        return entry

    async def get(self, feedback_id: UUID) -> FeedbackRecord | None:
        """Return one stored feedback, or None when the id is unknown."""
        return await self._run(self._store.get, feedback_id)

    async def list_feedback(self, query: FeedbackQuery) -> list[FeedbackRecord]:
        """Return the newest feedback that matches the filters, newest first."""
        return await self._run(self._store.list_feedback, query)

    async def daily_volume(self, query: FeedbackQuery) -> list[DailyVolume]:
        """Return per-day counts by sentiment of the feedback that matches the filters."""
        return await self._run(self._store.daily_volume, query)

    async def export_address(self, address: str) -> PrivacyExport:
        """Return every stored row about one email address."""
        return await self._run(self._store.export_address, address)

    async def erase_address(self, address: str, reason: str, request_id: str) -> ErasureResult:
        """Erase one email address's data in one transaction, then rewrite the snapshots without it."""
        now = datetime.now(timezone.utc)
        result = await self._run(
            lambda: self._store.erase_address(address, reason=reason, request_id=request_id, now=now)
        )
        logger.info(
            "Erased %d feedback row(s), %d outbox entries and %d Idempotency-Key(s) of one address (erasure %s, request %s)",
            result.feedback_rows,
            result.outbox_rows,
            result.idempotency_keys,
            result.erasure_id,
            request_id,
        )
        if result.feedback_rows:
            await self._run(self._publisher.request_rewrite, f"erasure {result.erasure_id}")
            # Publishing now starts the rewrite, instead of at the next interval.
            await self._publish_once()
        return result

    async def _retain_forever(self) -> None:
        """Apply retention every retention_interval_s, until the replica stops."""
        settings = self._retention
        logger.info(
            "Started retention: %s feedback older than %d day(s), every %.0f s",
            settings.retention_mode,
            settings.retention_days,
            settings.retention_interval_s,
        )
        while True:
            try:
                await self._apply_retention_once()
            except StoreError as error:
                logger.error("Retention failed; retrying at the next interval: %s", error_summary(error))
            await asyncio.sleep(settings.retention_interval_s)

    async def _apply_retention_once(self) -> RetentionResult:
        now = datetime.now(timezone.utc)
        cutoff = now - timedelta(days=self._retention.retention_days)
        mode = self._retention.retention_mode
        result = await self._run(lambda: self._store.apply_retention(cutoff=cutoff, mode=mode, now=now))
        logger.info(
            "Retention run %s (%s before %s): %d feedback row(s), %d outbox entries, %d Idempotency-Key(s)",
            result.run_id,
            mode,
            cutoff.isoformat(),
            result.feedback_rows,
            result.outbox_rows,
            result.idempotency_keys,
        )
        if result.changed:
            await self._run(self._publisher.request_rewrite, f"retention run {result.run_id}")
            await self._publish_once()
        return result

    async def health(self) -> dict[str, object]:
        await self._run(self._store.check_writable)
        outbox = await self._run(self._store.outbox_counts)
        self._metrics.set_outbox_counts(outbox)
        waiting = await self._run(lambda: self._store.enrichment_counts(max_attempts=self._retry.enrichment_max_attempts))
        scorer_running = not self._scorer.done()
        snapshots_ok = not self._publishing.done() and self._publisher.compaction_running and self._last_publish_error is None
        # A failing rewrite leaves erased rows readable in the snapshots.
        snapshots_ok = snapshots_ok and self._publisher.rewrite_error is None
        return {
            "status": "ok" if scorer_running and snapshots_ok else "failing",
            "db_path": str(self._store.path),
            "outbox": outbox,
            "without_sentiment": waiting,
            "late_scoring_running": scorer_running,
            "snapshots": {
                "dir": str(self._snapshot_dir),
                "publishing": not self._publishing.done(),
                "compaction_running": self._publisher.compaction_running,
                "last_error": self._last_publish_error,
                "rewrite_pending": self._publisher.rewrite_pending,
                "rewrite_error": self._publisher.rewrite_error,
            },
            "retention_running": self._retaining is not None and not self._retaining.done(),
        }

    async def ready(self) -> dict[str, object]:
        """Return readiness for /readyz: ready when a write transaction can be opened.

        The reason goes back to ingest, which logs it.
        """
        try:
            await self._run(self._store.check_writable)
        except StoreError as error:
            return {"ready": False, "reason": error_summary(error)}
        return {"ready": True}

    async def _run_timed(self, operation: str, function: Callable[[], ResultT]) -> ResultT:
        """Run a DuckDB write on the store's thread and record its time under `operation`."""
        result, seconds = await self._run(timed_call, function)
        self._metrics.observe_commit(operation, seconds)
        return result

    async def _run(self, function: Callable[..., ResultT], *args: Any) -> ResultT:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, function, *args)

    def __del__(self) -> None:
        # Serve calls __del__ when it stops the replica; closing checkpoints the WAL.
        for name in ("_scorer", "_publishing", "_outbox_gauge", "_retaining"):
            task = getattr(self, name, None)
            if task is not None:
                task.cancel()
        store = getattr(self, "_store", None)
        publisher = getattr(self, "_publisher", None)
        if store is not None and publisher is not None:
            # A last publish, so that readers see every row committed before the stop.
            try:
                self._executor.submit(store.publish_snapshot, publisher).result()
            except SnapshotError as error:
                logger.error("Failed to publish the last snapshot before stopping: %s", error_summary(error))
            publisher.close()
        if store is not None:
            self._executor.submit(store.close).result()
            self._executor.shutdown()
            logger.info("Closed the feedback database %s", store.path)
