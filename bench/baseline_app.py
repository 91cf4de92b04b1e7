"""A plain FastAPI process that does the pipeline's work without Ray, for comparison.

    python -m bench.baseline_app --port 29100 --db /tmp/x/feedback.duckdb \\
        --customer-url 'mailto://127.0.0.1:29525?from=feedback@feedbackbot.localhost'

`POST /v1/feedback` does in one process what the Serve graph does in five deployments.
It runs `validate_submission` and the Idempotency-Key lookup, scores the text with
`SentimentModel` in micro-batches, and commits each micro-batch with one
`FeedbackStore.commit_submissions` call, including the outbox rows that
`NotificationPolicy` owes. A background sender delivers the outbox with apprise. Batch
sizes and waits come from the command line, where `bench.run` passes the values of
serve_config.yaml. The time limits are the service's defaults: 5 s for the model and 20 s
for the commit.

Left out, because the benchmark does not use them: form posts, the admin and read routes,
late scoring of rows stored without sentiment, and the circuit breaker of the sender.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import apprise
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from feedbackbot.errors import StoreError
from feedbackbot.notify import CUSTOMER_TARGET, NotificationPolicy, admin_target_id, backoff_delay_s, set_thread_cpu_priority
from feedbackbot.sentiment import SentimentModel, join_shares, label_for_score, split_for_workers
from feedbackbot.smtp_tls import reuse_smtp_tls_contexts
from feedbackbot.store import FeedbackStore
from models.feedback import (
    ClaimedNotification,
    DeliveryResult,
    FeedbackCreated,
    FeedbackRecord,
    FeedbackSubmission,
    IdempotencyClaim,
    OwedNotification,
    SentimentOut,
    StoreOutcome,
    validate_submission,
)

logger = logging.getLogger("bench.baseline_app")

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")

KEY_ID_HEADER = "X-Feedbackbot-Key-Id"
CLAIM_BATCH_SIZE = 32
NOTIFY_MAX_ATTEMPTS = 8


@dataclass(frozen=True)
class BaselineSettings:
    """Settings of the baseline process, which `bench.run` fills from serve_config.yaml."""

    db_path: Path
    customer_notify_url: str | None
    admin_notify_urls: tuple[str, ...]
    torch_threads: int = 1
    sentiment_batch_size: int = 16
    model_batch_size: int = 8
    model_workers: int = 1
    notify_cpu_priority: str = "normal"
    sentiment_batch_wait_s: float = 0.01
    commit_batch_size: int = 32
    commit_batch_wait_s: float = 0.005
    neutral_low: float = 0.35
    neutral_high: float = 0.65
    admin_alert_max_rating: int = 2
    idempotency_window_s: float = 86_400.0
    enrichment_timeout_s: float = 5.0
    persistence_timeout_s: float = 20.0
    notify_timeout_s: float = 10.0
    notify_poll_interval_s: float = 1.0
    notify_lease_s: float = 120.0


class MicroBatcher(Generic[ItemT, ResultT]):
    """Groups concurrent calls into batches for one handler, as Serve's @serve.batch does.

    A batch starts with the first waiting call and takes the calls that arrive within
    `wait_s`, up to `max_size`. Batches run one at a time. An exception from the handler
    is raised in every call of that batch.
    """

    def __init__(self, handler: Callable[[list[ItemT]], Awaitable[list[ResultT]]], max_size: int, wait_s: float) -> None:
        self._handler = handler
        self._max_size = max_size
        self._wait_s = wait_s
        self._waiting: list[tuple[ItemT, asyncio.Future[ResultT]]] = []
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run_batches())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def submit(self, item: ItemT) -> ResultT:
        future: asyncio.Future[ResultT] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        self._arrived.set()
        return await future

    async def _run_batches(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._arrived.wait()

            # Collect calls until the batch is full or the wait since its first call is over.
            deadline = loop.time() + self._wait_s
            while len(self._waiting) < self._max_size:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except asyncio.TimeoutError:
                    break

            batch = self._waiting[: self._max_size]
            del self._waiting[: self._max_size]
            if not self._waiting:
                self._arrived.clear()
            if batch:
                await self._run_one(batch)

    async def _run_one(self, batch: list[tuple[ItemT, asyncio.Future[ResultT]]]) -> None:
        try:
            results = await self._handler([item for item, _ in batch])
        except Exception as error:  # noqa: BLE001 - every failure goes back to the callers, which handle it.
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return

        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)


class BaselinePipeline:
    """Validation, sentiment, commit and outbox sender of the baseline, in one event loop."""

    def __init__(self, settings: BaselineSettings) -> None:
        self._settings = settings
        admin_urls = settings.admin_notify_urls
        self._policy = NotificationPolicy(
            customer_enabled=settings.customer_notify_url is not None,
            admin_target_ids=tuple(admin_target_id(url) for url in admin_urls),
            alert_max_rating=settings.admin_alert_max_rating,
        )
        self._urls = {admin_target_id(url): url for url in admin_urls}
        if settings.customer_notify_url:
            self._urls[CUSTOMER_TARGET] = settings.customer_notify_url

        # model_workers threads run forward passes, as in an Enrichment replica. One thread
        # runs every DuckDB call, because a DuckDB connection must not be used from two
        # threads at once. Mail goes out from its own threads at the sender's CPU priority,
        # as in a Notification replica.
        self._model_executor = ThreadPoolExecutor(max_workers=settings.model_workers, thread_name_prefix="model")
        self._db_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="duckdb")
        self._mail_executor = ThreadPoolExecutor(
            max_workers=CLAIM_BATCH_SIZE,
            thread_name_prefix="mail",
            initializer=set_thread_cpu_priority,
            initargs=(settings.notify_cpu_priority,),
        )
        self._scorer = MicroBatcher(self._score_batch, settings.sentiment_batch_size, settings.sentiment_batch_wait_s)
        self._committer = MicroBatcher(self._commit_batch, settings.commit_batch_size, settings.commit_batch_wait_s)
        self._wake = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self._model: SentimentModel | None = None
        self._store: FeedbackStore | None = None
        self.sent_count = 0

    async def start(self) -> None:
        # The service's Notification replica does the same, so both send mail at the same cost.
        reuse_smtp_tls_contexts()
        threads = self._settings.torch_threads
        self._model = await self._in_model_thread(lambda: SentimentModel.load("builtin", num_threads=threads))
        self._store = await self._in_db_thread(lambda: FeedbackStore.open(self._settings.db_path))
        logger.info("Loaded %s with %d torch thread(s); opened %s", self._model.version, threads, self._settings.db_path)

        self._scorer.start()
        self._committer.start()
        self._sender = asyncio.get_running_loop().create_task(self._send_forever())

    async def stop(self) -> None:
        if self._sender is not None:
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
        await self._scorer.stop()
        await self._committer.stop()
        if self._store is not None:
            await self._in_db_thread(self._store.close)
        self._model_executor.shutdown()
        self._db_executor.shutdown()
        self._mail_executor.shutdown()
        logger.info("Stopped the baseline pipeline; %d notification(s) sent", self.sent_count)

    async def submit(self, payload: object, claim_key: str | None, scope: str, request_id: str) -> JSONResponse:
        """Validate, score and commit one submission, and return the response the graph would give."""
        result = validate_submission(payload)
        if result.errors:
            fields = [error.model_dump() for error in result.errors]
            return _error(422, "validation_failed", f"{len(fields)} field(s) are invalid.", fields=fields)

        submission = result.submission
        claim = _claim(claim_key, scope, submission) if claim_key is not None else None
        try:
            if claim is not None:
                earlier = await self._in_db_thread(
                    lambda: self._store.find_claim(
                        claim, now=datetime.now(timezone.utc), idempotency_window_s=self._settings.idempotency_window_s
                    )
                )
                if earlier is not None:
                    return _repeat_response(earlier)

            record = FeedbackRecord(
                id=uuid.uuid4(),
                received_at=datetime.now(timezone.utc),
                request_id=request_id,
                customer_name=submission.customer_name,
                customer_email=submission.customer_email,
                feedback_text=submission.feedback_text,
                rating=submission.rating,
            )
            record = await self._with_sentiment(record)
            item = (record, claim, self._policy.owed(record))
            outcome: StoreOutcome = await asyncio.wait_for(
                self._committer.submit(item), self._settings.persistence_timeout_s
            )
        except (asyncio.TimeoutError, StoreError) as error:
            logger.error("Feedback was not stored: %s", error)
            return _error(503, "unavailable", "The feedback could not be stored; submit it again.")

        if outcome.status != "created":
            return _repeat_response(outcome)
        self._wake.set()
        return _created(outcome.record)

    async def outbox_counts(self) -> dict[str, int]:
        return await self._in_db_thread(self._store.outbox_counts)

    async def _with_sentiment(self, record: FeedbackRecord) -> FeedbackRecord:
        """Return the record with its sentiment, or unchanged when the model fails or is too slow."""
        try:
            score = await asyncio.wait_for(self._scorer.submit(record.feedback_text), self._settings.enrichment_timeout_s)
        except (asyncio.TimeoutError, RuntimeError, ValueError) as error:
            logger.warning("Storing feedback %s without sentiment: %s", record.id, error or type(error).__name__)
            return record

        label = label_for_score(score, neutral_low=self._settings.neutral_low, neutral_high=self._settings.neutral_high)
        return record.model_copy(
            update={"sentiment_label": label, "sentiment_score": score, "model_version": self._model.version}
        )

    async def _score_batch(self, texts: list[str]) -> list[float]:
        batch_size = self._settings.model_batch_size
        shares = split_for_workers(texts, batch_size, self._settings.model_workers)
        share_scores = await asyncio.gather(
            *(
                self._in_model_thread(lambda share=share: self._model.predict_positive([texts[index] for index in share], batch_size=batch_size))
                for share in shares
            )
        )
        return join_shares(shares, share_scores, len(texts))

    async def _commit_batch(
        self, items: list[tuple[FeedbackRecord, IdempotencyClaim | None, list[OwedNotification]]]
    ) -> list[StoreOutcome]:
        now = datetime.now(timezone.utc)
        window_s = self._settings.idempotency_window_s
        outcomes = await self._in_db_thread(
            lambda: self._store.commit_submissions(items, now=now, idempotency_window_s=window_s)
        )
        logger.info("Committed a batch of %d feedback row(s)", len(items))
        return outcomes

    async def _send_forever(self) -> None:
        """Deliver due outbox entries until cancelled, waiting for a commit or the poll interval when none is due."""
        while True:
            now = datetime.now(timezone.utc)
            try:
                claimed = await self._in_db_thread(
                    lambda: self._store.claim_notifications(now=now, limit=CLAIM_BATCH_SIZE, lease_s=self._settings.notify_lease_s)
                )
            except StoreError as error:
                logger.error("Failed to claim notifications, retrying after the poll interval: %s", error)
                claimed = []

            if claimed:
                results = await asyncio.gather(*(self._deliver(item) for item in claimed))
                finished_at = datetime.now(timezone.utc)
                await self._in_db_thread(lambda: self._store.finish_notifications(results, now=finished_at))
                continue

            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self._settings.notify_poll_interval_s)
            except asyncio.TimeoutError:
                pass  # No commit woke the sender, so it polls on its own schedule.

    async def _deliver(self, item: ClaimedNotification) -> DeliveryResult:
        entry, record = item.entry, item.record
        url = self._urls.get(entry.target)
        if url is None:
            return DeliveryResult(entry_id=entry.id, outcome="dead", error=f"target {entry.target} is not configured")

        if entry.kind == "confirmation":
            url = _with_query(url, to=record.customer_email)
            title = "We received your feedback"
            body = f"Hello {record.customer_name},\n\nyour feedback is stored under the reference {record.id}.\n"
        else:
            title = f"Feedback alert: {record.id}"
            body = f"Rating {record.rating}, sentiment {record.sentiment_label}.\n\n{record.feedback_text}\n"

        def send() -> apprise.AppriseResult:
            sender = apprise.Apprise()
            sender.add(_with_query(url, format="text"))
            return sender.notify(
                body=body, title=title, body_format=apprise.NotifyFormat.TEXT, timeout=self._settings.notify_timeout_s
            )

        sent = await asyncio.get_running_loop().run_in_executor(self._mail_executor, send)
        if sent:
            self.sent_count += 1
            return DeliveryResult(entry_id=entry.id, outcome="sent")

        attempts = entry.attempts + 1
        error = f"apprise status {sent.status.name}"
        if attempts >= NOTIFY_MAX_ATTEMPTS:
            return DeliveryResult(entry_id=entry.id, outcome="dead", error=error)
        delay_s = backoff_delay_s(attempts, base_s=2.0, max_s=600.0)
        retry_at = datetime.now(timezone.utc) + timedelta(seconds=delay_s)
        return DeliveryResult(entry_id=entry.id, outcome="retry", error=error, next_attempt_at=retry_at)

    async def _in_model_thread(self, function: Callable[[], ResultT]) -> ResultT:
        return await asyncio.get_running_loop().run_in_executor(self._model_executor, function)

    async def _in_db_thread(self, function: Callable[[], ResultT]) -> ResultT:
        return await asyncio.get_running_loop().run_in_executor(self._db_executor, function)


def _claim(key: str, scope: str, submission: FeedbackSubmission) -> IdempotencyClaim:
    # The same fingerprint as the ingest deployment: SHA-256 of the validated submission as canonical JSON.
    canonical = json.dumps(submission.model_dump(), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return IdempotencyClaim(key=key, scope=scope, body_sha256=hashlib.sha256(canonical.encode()).hexdigest())


def _created(record: FeedbackRecord, *, replayed: bool = False) -> JSONResponse:
    if record.sentiment_pending:
        sentiment, status = None, "pending"
    else:
        sentiment, status = SentimentOut(label=record.sentiment_label, score=record.sentiment_score), "done"
    body = FeedbackCreated(id=record.id, received_at=record.received_at, sentiment=sentiment, sentiment_status=status)
    headers = {"Location": f"/v1/feedback/{record.id}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(body.model_dump(mode="json"), status_code=201, headers=headers)


def _repeat_response(outcome: StoreOutcome) -> JSONResponse:
    if outcome.status == "replayed":
        return _created(outcome.record, replayed=True)
    return _error(409, "idempotency_conflict", "The Idempotency-Key was already used for a different submission.")


def _error(status: int, code: str, message: str, *, fields: list[dict[str, Any]] | None = None) -> JSONResponse:
    detail: dict[str, Any] = {"code": code, "message": message}
    if fields:
        detail["fields"] = fields
    return JSONResponse({"error": detail}, status_code=status)


def _with_query(url: str, **values: str) -> str:
    """Return the apprise URL with these query parameters set, replacing earlier values."""
    parts = urlsplit(url)
    query = [(key, value) for key, value in parse_qsl(parts.query) if key not in values]
    query.extend(values.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


def create_app(settings: BaselineSettings) -> FastAPI:
    """Build the FastAPI app. The pipeline loads the model and opens the database at startup."""
    pipeline = BaselinePipeline(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await pipeline.start()
        yield
        await pipeline.stop()

    app = FastAPI(title="feedbackbot baseline", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)

    @app.post("/v1/feedback")
    async def submit(request: Request) -> JSONResponse:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            return _error(415, "unsupported_media_type", "Send application/json.")
        try:
            payload = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError) as error:
            return _error(422, "validation_failed", f"The body is not valid JSON: {error}.")

        return await pipeline.submit(
            payload,
            request.headers.get("idempotency-key"),
            request.headers.get(KEY_ID_HEADER, ""),
            request.headers.get("x-request-id") or uuid.uuid4().hex,
        )

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        outbox = await pipeline.outbox_counts()
        return JSONResponse({"status": "ok", "deployments": {"persistence": {"status": "ok", "outbox": outbox}}})

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The feedback pipeline in one FastAPI process, without Ray.")
    parser.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1.")
    parser.add_argument("--db", type=Path, required=True, help="DuckDB file to create or open.")
    parser.add_argument("--customer-url", help="Apprise URL for customer confirmations. Without it, none are sent.")
    parser.add_argument("--admin-url", action="append", default=[], help="Apprise URL for admin alerts. Repeat the option for several.")
    parser.add_argument("--torch-threads", type=int, default=1, help="Torch intra-op threads (default: %(default)s).")
    parser.add_argument("--sentiment-batch-size", type=int, default=16, help="Texts collected into one model batch (default: %(default)s).")
    parser.add_argument("--model-batch-size", type=int, default=8, help="Texts per forward pass, after sorting a batch by length (default: %(default)s).")
    parser.add_argument("--model-workers", type=int, default=1, help="Forward passes that run at the same time (default: %(default)s).")
    parser.add_argument(
        "--notify-cpu-priority",
        choices=("idle", "normal"),
        default="normal",
        help="CPU priority of the threads that send mail (default: %(default)s).",
    )
    parser.add_argument("--sentiment-batch-wait-s", type=float, default=0.01, help="Wait for a model batch to fill, in seconds.")
    parser.add_argument("--commit-batch-size", type=int, default=32, help="Rows per DuckDB commit (default: %(default)s).")
    parser.add_argument("--commit-batch-wait-s", type=float, default=0.005, help="Wait for a commit batch to fill, in seconds.")
    parser.add_argument("--neutral-low", type=float, default=0.35, help="Scores below this are negative.")
    parser.add_argument("--neutral-high", type=float, default=0.65, help="Scores above this are positive.")
    parser.add_argument("--admin-alert-max-rating", type=int, default=2, help="Ratings at or below this alert the admins.")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = BaselineSettings(
        db_path=args.db,
        customer_notify_url=args.customer_url,
        admin_notify_urls=tuple(args.admin_url),
        torch_threads=args.torch_threads,
        sentiment_batch_size=args.sentiment_batch_size,
        model_batch_size=args.model_batch_size,
        model_workers=args.model_workers,
        notify_cpu_priority=args.notify_cpu_priority,
        sentiment_batch_wait_s=args.sentiment_batch_wait_s,
        commit_batch_size=args.commit_batch_size,
        commit_batch_wait_s=args.commit_batch_wait_s,
        neutral_low=args.neutral_low,
        neutral_high=args.neutral_high,
        admin_alert_max_rating=args.admin_alert_max_rating,
    )
    uvicorn.run(create_app(settings), host="127.0.0.1", port=args.port, log_level="info")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
