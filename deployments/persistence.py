"""Persistence deployment: the single DuckDB writer, committing in batches."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, TypeVar
from uuid import UUID

from ray import serve

from feedbackbot.notify import NotificationPolicy
from feedbackbot.settings import BatchSettings, load_settings, resolve_path
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

logger = logging.getLogger("ray.serve")

ResultT = TypeVar("ResultT")

PURGE_INTERVAL_S = 600.0


@serve.deployment
class Persistence:
    """Owns the DuckDB file. Runs as exactly one replica, because DuckDB allows one writer."""

    def __init__(self, db_path: str, idempotency_window_s: float, policy: NotificationPolicy) -> None:
        path = resolve_path(db_path)
        self._idempotency_window_s = idempotency_window_s
        self._policy = policy
        self._next_purge = 0.0
        # One thread runs every DuckDB call, since a DuckDB connection must not be used
        # from two threads at once.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="duckdb")
        self._store = self._executor.submit(FeedbackStore.open, path).result()
        logger.info("Opened the feedback database %s with %d rows", path, self._executor.submit(self._store.count).result())

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply batch size and batch wait from user_config without a restart."""
        settings = load_settings(BatchSettings, user_config)
        self._commit_batch.set_max_batch_size(settings.max_batch_size)
        self._commit_batch.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)
        logger.info("Applied persistence settings %s", settings.model_dump())

    async def store(self, accepted: AcceptedSubmission, sentiment: Sentiment) -> StoreOutcome:
        """Commit one feedback row, or find the original of a repeated Idempotency-Key.

        Returns only after the commit.
        """
        submission = accepted.submission
        record = FeedbackRecord(
            id=accepted.id,
            received_at=accepted.received_at,
            request_id=accepted.request_id,
            customer_name=submission.customer_name,
            customer_email=submission.customer_email,
            feedback_text=submission.feedback_text,
            rating=submission.rating,
            sentiment_label=sentiment.label,
            sentiment_score=sentiment.score,
            model_version=sentiment.model_version,
        )
        return await self._commit_batch((record, accepted.idempotency, self._policy.owed(record)))

    async def find_claim(self, claim: IdempotencyClaim) -> StoreOutcome | None:
        """Return the outcome of an earlier use of this Idempotency-Key, or None."""
        now = datetime.now(timezone.utc)
        return await self._run(
            lambda: self._store.find_claim(claim, now=now, idempotency_window_s=self._idempotency_window_s)
        )

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _commit_batch(
        self, items: list[tuple[FeedbackRecord, IdempotencyClaim | None, list[OwedNotification]]]
    ) -> list[StoreOutcome]:
        now = datetime.now(timezone.utc)
        outcomes = await self._run(
            lambda: self._store.commit_submissions(items, now=now, idempotency_window_s=self._idempotency_window_s)
        )
        created = sum(1 for outcome in outcomes if outcome.status == "created")
        logger.info("Committed %d feedback row(s) of a batch of %d", created, len(items))
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

    async def claim_notifications(self, limit: int, lease_s: float) -> list[ClaimedNotification]:
        """Lease due outbox entries to the calling sender."""
        now = datetime.now(timezone.utc)
        return await self._run(lambda: self._store.claim_notifications(now=now, limit=limit, lease_s=lease_s))

    async def finish_notifications(self, results: list[DeliveryResult]) -> None:
        """Record what a sender did with the entries it leased."""
        now = datetime.now(timezone.utc)
        await self._run(lambda: self._store.finish_notifications(results, now=now))

    async def list_outbox(self, status: str, limit: int) -> list[OutboxEntry]:
        return await self._run(lambda: self._store.list_outbox(status=status, limit=limit))

    async def requeue_notification(self, entry_id: UUID) -> OutboxEntry | None:
        now = datetime.now(timezone.utc)
        entry = await self._run(lambda: self._store.requeue_notification(entry_id, now=now))
        if entry is not None:
            logger.info("Requeued dead outbox entry %s for feedback %s", entry.id, entry.feedback_id)
        return entry

    async def get(self, feedback_id: UUID) -> FeedbackRecord | None:
        """Return one stored feedback, or None when the id is unknown."""
        return await self._run(self._store.get, feedback_id)

    async def health(self) -> dict[str, object]:
        await self._run(self._store.check_writable)
        outbox = await self._run(self._store.outbox_counts)
        return {"status": "ok", "db_path": str(self._store.path), "outbox": outbox}

    async def _run(self, function: Callable[..., ResultT], *args: Any) -> ResultT:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, function, *args)

    def __del__(self) -> None:
        # Serve calls __del__ when it stops the replica; closing checkpoints the WAL.
        store = getattr(self, "_store", None)
        if store is not None:
            self._executor.submit(store.close).result()
            self._executor.shutdown()
            logger.info("Closed the feedback database %s", store.path)
