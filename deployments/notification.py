"""Notification deployment: delivers the outbox with apprise.

Persistence writes the notifications that a feedback owes into the DuckDB outbox in the
same transaction as the row. Each notification replica runs a sender that leases due
entries from persistence, sends them, and reports each result back. A failed send is tried
again with exponential backoff and jitter until `notify_max_attempts`, then the entry is
`dead` with its last error. A target that fails `notify_circuit_failures` times in a row is
skipped for `notify_circuit_open_s`, and its entries wait without using up tries; then a
single trial send decides whether it is back.

Delivery is at least once: a replica that dies after a send but before reporting it leaves
the entry to be sent again when its lease ends.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import apprise
import ray.exceptions
from ray import serve
from ray.serve.handle import DeploymentHandle

from feedbackbot.errors import error_summary
from feedbackbot.metrics import NotificationMetrics
from feedbackbot.notify import CUSTOMER_TARGET, CircuitBreaker, admin_target_id, backoff_delay_s, set_thread_cpu_priority
from feedbackbot.redact import mask_url
from feedbackbot.settings import NotifySettings
from feedbackbot.smtp_tls import reuse_smtp_tls_contexts
from models.feedback import ClaimedNotification, DeliveryResult, FeedbackRecord

logger = logging.getLogger("ray.serve")

CLAIM_BATCH_SIZE = 32
# Kept below the deployment's graceful_shutdown_timeout_s in serve_config.yaml.
SHUTDOWN_WAIT_S = 15.0


# The helpers below stay above the deployment class: Serve pickles the class by value when
# the decorator runs, and names defined after it would be missing in the replica.


def _confirmation(record: FeedbackRecord) -> tuple[str, str]:
    body = (
        f"Hello {record.customer_name},\n\n"
        f"thank you for your feedback. We stored it under the reference {record.id}.\n"
        "Quote this reference if you contact us about it.\n"
    )
    return "We received your feedback", body


def _admin_alert(record: FeedbackRecord) -> tuple[str, str]:
    if record.sentiment_pending:
        sentiment = "not scored yet"
        reason = f"rating {record.rating}"
    else:
        sentiment = f"{record.sentiment_label} (score {record.sentiment_score:.2f})"
        reason = f"rating {record.rating}, {record.sentiment_label} sentiment"
    body = (
        f"Feedback {record.id} needs attention ({reason}).\n"
        f"Rating: {record.rating}\n"
        f"Sentiment: {sentiment}\n"
        f"Customer: {record.customer_name} <{record.customer_email}>\n"
        f"Received: {record.received_at.isoformat()}\n\n"
        f"{record.feedback_text}\n"
    )
    return f"Feedback alert ({reason}): {record.id}", body


def _with_recipient(url: str, address: str) -> str:
    """Return the apprise mail URL with `to` set to this customer's address."""
    parts = urlsplit(url)
    query = [(key, value) for key, value in parse_qsl(parts.query) if key != "to"]
    query.append(("to", address))
    return urlunsplit(parts._replace(query=urlencode(query)))


def _as_plain_text(url: str) -> str:
    """Return the apprise URL with format=text, so mail goes out as text/plain only."""
    parts = urlsplit(url)
    query = [(key, value) for key, value in parse_qsl(parts.query) if key != "format"]
    query.append(("format", "text"))
    return urlunsplit(parts._replace(query=urlencode(query)))


@serve.deployment
class Notification:
    """Runs one outbox sender and sends through apprise."""

    async def __init__(
        self,
        persistence: DeploymentHandle,
        customer_notify_url: str | None,
        admin_notify_urls: list[str],
        settings: NotifySettings,
    ) -> None:
        self._persistence = persistence
        self._settings = settings
        self._urls: dict[str, str] = {admin_target_id(url): url for url in admin_notify_urls}
        if customer_notify_url:
            self._urls[CUSTOMER_TARGET] = customer_notify_url
        self._breaker = CircuitBreaker(settings.notify_circuit_failures, settings.notify_circuit_open_s)
        self._metrics = NotificationMetrics(self._urls)
        self._stopping = False
        self.sent_count = 0
        self.failed_count = 0
        reuse_smtp_tls_contexts()
        priority = set_thread_cpu_priority(settings.notify_cpu_priority)

        self._sender = asyncio.get_running_loop().create_task(self._send_forever())
        targets = {target: mask_url(url) for target, url in self._urls.items()}
        logger.info("Started the outbox sender at %s CPU priority; targets %s", priority, targets or "none")

    async def _send_forever(self) -> None:
        poll_s = self._settings.notify_poll_interval_s
        while not self._stopping:
            try:
                # Persistence returns after at most poll_s, or sooner when a commit adds entries.
                # Entries of held-back targets stay in the outbox, so an open circuit costs no claims.
                claimed: list[ClaimedNotification] = await self._persistence.claim_notifications.remote(
                    CLAIM_BATCH_SIZE, self._settings.notify_lease_s, self._breaker.held_back(), poll_s
                )
            except ray.exceptions.RayError as error:
                logger.error("Failed to claim notifications, retrying in %.1f s: %s", poll_s, error_summary(error))
                await asyncio.sleep(poll_s)
                continue

            if claimed:
                await self._deliver_batch(claimed)
            if 0 < len(claimed) < CLAIM_BATCH_SIZE and not self._stopping:
                # The outbox has no backlog, so the entries of the next commits gather meanwhile
                # and the writer serves fewer, larger claims.
                await asyncio.sleep(self._settings.notify_claim_gather_s)

    async def _deliver_batch(self, claimed: list[ClaimedNotification]) -> None:
        results = await asyncio.gather(*(self._deliver(item) for item in claimed))
        try:
            await self._persistence.finish_notifications.remote(list(results))
        except ray.exceptions.RayError as error:
            # NOTE: the leases run out and these entries are sent again, so delivery is at least once.
            logger.error("Failed to record %d notification results: %s", len(results), error_summary(error))

    async def _deliver(self, item: ClaimedNotification) -> DeliveryResult:
        entry, record = item.entry, item.record
        now = datetime.now(timezone.utc)
        # The sender runs outside any request, so the log lines carry the ids of the request
        # that stored the feedback.
        ids = {"feedback_id": str(entry.feedback_id), "request_id": record.request_id}

        url = self._urls.get(entry.target)
        if url is None:
            message = f"target {entry.target} is no longer configured"
            logger.error("Outbox entry %s for feedback %s is dead: %s", entry.id, entry.feedback_id, message, extra=ids)
            self._metrics.count_failure(entry.target, "dead")
            return DeliveryResult(entry_id=entry.id, outcome="dead", error=message)

        wait_s = self._breaker.wait_s(entry.target)
        if wait_s > 0:
            return DeliveryResult(
                entry_id=entry.id,
                outcome="deferred",
                error=f"circuit of {entry.target} open",
                next_attempt_at=now + timedelta(seconds=wait_s),
            )

        error = await self._send(entry.kind, url, record)
        self._breaker.record(entry.target, error is None)
        if error is None:
            self.sent_count += 1
            self._metrics.count_sent(entry.target)
            logger.info("Sent %s for feedback %s to %s", entry.kind, entry.feedback_id, entry.target, extra=ids)
            return DeliveryResult(entry_id=entry.id, outcome="sent")

        self.failed_count += 1
        attempts = entry.attempts + 1
        if attempts >= self._settings.notify_max_attempts:
            logger.error(
                "Failed to send %s for feedback %s to %s after %d tries, entry %s is dead: %s",
                entry.kind, entry.feedback_id, entry.target, attempts, entry.id, error,
                extra=ids,
            )  # fmt: skip
            self._metrics.count_failure(entry.target, "dead")
            return DeliveryResult(entry_id=entry.id, outcome="dead", error=error)

        delay_s = backoff_delay_s(
            attempts, base_s=self._settings.notify_backoff_base_s, max_s=self._settings.notify_backoff_max_s
        )
        logger.warning(
            "Failed to send %s for feedback %s to %s (try %d), retrying in %.1f s: %s",
            entry.kind, entry.feedback_id, entry.target, attempts, delay_s, error,
            extra=ids,
        )  # fmt: skip
        self._metrics.count_failure(entry.target, "retry")
        return DeliveryResult(
            entry_id=entry.id, outcome="retry", error=error, next_attempt_at=now + timedelta(seconds=delay_s)
        )

    async def _send(self, kind: str, url: str, record: FeedbackRecord) -> str | None:
        """Send one message and return None, or the error as text."""
        if kind == "confirmation":
            url = _with_recipient(url, record.customer_email)
            title, body = _confirmation(record)
        else:
            title, body = _admin_alert(record)

        sender = apprise.Apprise()
        if not sender.add(_as_plain_text(url)):
            return f"apprise rejected the URL {mask_url(url)}; fix the notify URL setting"
        # The body contains customer text, so it goes out as plain text: never as HTML that
        # a mail client would render, and without apprise's markup conversion.
        result = await sender.async_notify(
            body=body, title=title, body_format=apprise.NotifyFormat.TEXT, timeout=self._settings.notify_timeout_s
        )
        return None if result else f"apprise status {result.status.name} from {mask_url(url)}"

    async def ready(self) -> dict[str, object]:
        """Return readiness for /readyz: ready while the outbox sender runs."""
        if self._sender.done():
            return {"ready": False, "reason": "the outbox sender has stopped"}
        return {"ready": True}

    async def health(self) -> dict[str, object]:
        running = not self._sender.done()
        return {
            "status": "ok" if running else "failing",
            "sender_running": running,
            "sent": self.sent_count,
            "failed": self.failed_count,
        }

    async def __del__(self) -> None:
        # Serve awaits this when it stops the replica. The sender finishes the batch it holds,
        # so that no sent message is left unrecorded, within a bound.
        self._stopping = True
        try:
            await asyncio.wait_for(asyncio.shield(self._sender), SHUTDOWN_WAIT_S)
        except asyncio.TimeoutError:
            self._sender.cancel()
            logger.error("Stopped the outbox sender mid-batch; its leases expire and the entries are sent again")
        logger.info("Notification replica stopped: %d sent, %d failed", self.sent_count, self.failed_count)
