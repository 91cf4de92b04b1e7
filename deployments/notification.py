"""Notification deployment: customer confirmations and admin alerts through apprise.

`notify` only queues the messages and returns, so a slow or failing mail server never
delays the 201 that ingest sends. A worker task in the replica sends the queue in order.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import apprise
from ray import serve

from feedbackbot.redact import mask_url
from models.feedback import FeedbackRecord

logger = logging.getLogger("ray.serve")

# Kept below the deployment's graceful_shutdown_timeout_s in serve_config.yaml.
SHUTDOWN_DRAIN_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Message:
    """One notification to send: the apprise URL, its kind and text."""

    feedback_id: str
    kind: str
    url: str
    title: str
    body: str


@serve.deployment
class Notification:
    """Queues and sends the notifications that each stored feedback owes."""

    def __init__(
        self,
        customer_notify_url: str | None,
        admin_notify_urls: list[str],
        admin_alert_max_rating: int,
        notify_timeout_s: float,
        notify_queue_max: int,
    ) -> None:
        self._customer_url = customer_notify_url
        self._admin_urls = list(admin_notify_urls)
        self._alert_max_rating = admin_alert_max_rating
        self._timeout_s = notify_timeout_s
        self._queue: asyncio.Queue[Message] = asyncio.Queue(maxsize=notify_queue_max)
        self._worker: asyncio.Task[None] | None = None
        self.sent_count = 0
        self.failed_count = 0

        targets = [mask_url(url) for url in self._admin_urls]
        logger.info(
            "Notification targets: customer %s, admins %s",
            mask_url(self._customer_url) if self._customer_url else "disabled",
            targets or "none",
        )

    async def notify(self, record: FeedbackRecord) -> int:
        """Queue the confirmation and any admin alert for one stored feedback.

        Returns the number of messages queued. A full queue drops the messages and logs
        them with the feedback id.
        """
        self._start_worker()
        messages = self._messages_for(record)
        for message in messages:
            try:
                self._queue.put_nowait(message)
            except asyncio.QueueFull:
                # TODO: a durable outbox in DuckDB would keep these across a full queue
                # and a replica restart; until then they are dropped and logged.
                logger.error(
                    "Dropped %s notification for feedback %s: queue full (%d waiting)",
                    message.kind,
                    message.feedback_id,
                    self._queue.qsize(),
                )
        return len(messages)

    def _messages_for(self, record: FeedbackRecord) -> list[Message]:
        feedback_id = str(record.id)
        messages = []

        if self._customer_url:
            messages.append(
                Message(
                    feedback_id=feedback_id,
                    kind="confirmation",
                    url=_with_recipient(self._customer_url, record.customer_email),
                    title="We received your feedback",
                    body=(
                        f"Hello {record.customer_name},\n\n"
                        f"thank you for your feedback. We stored it under the reference {feedback_id}.\n"
                        "Quote this reference if you contact us about it.\n"
                    ),
                )
            )

        if record.rating <= self._alert_max_rating or record.sentiment_label == "negative":
            reason = f"rating {record.rating}" if record.rating <= self._alert_max_rating else "negative sentiment"
            for url in self._admin_urls:
                messages.append(
                    Message(
                        feedback_id=feedback_id,
                        kind="admin_alert",
                        url=url,
                        title=f"Feedback alert ({reason}): {feedback_id}",
                        body=(
                            f"Feedback {feedback_id} needs attention ({reason}).\n"
                            f"Rating: {record.rating}\n"
                            f"Sentiment: {record.sentiment_label} (score {record.sentiment_score:.2f})\n"
                            f"Customer: {record.customer_name} <{record.customer_email}>\n"
                            f"Received: {record.received_at.isoformat()}\n\n"
                            f"{record.feedback_text}\n"
                        ),
                    )
                )
        return messages

    def _start_worker(self) -> None:
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._send_forever())
            logger.info("Started the notification sender")

    async def _send_forever(self) -> None:
        while True:
            message = await self._queue.get()
            try:
                await self._send(message)
            finally:
                self._queue.task_done()

    async def _send(self, message: Message) -> None:
        sender = apprise.Apprise()
        if not sender.add(message.url):
            self.failed_count += 1
            logger.error(
                "Failed to send %s for feedback %s: apprise rejected the URL %s; fix the notify URL setting",
                message.kind,
                message.feedback_id,
                mask_url(message.url),
            )
            return

        result = await sender.async_notify(body=message.body, title=message.title, timeout=self._timeout_s)
        if result:
            self.sent_count += 1
            logger.info("Sent %s for feedback %s to %s", message.kind, message.feedback_id, mask_url(message.url))
        else:
            # TODO: retries with backoff belong to a durable outbox; one failed try is final here.
            self.failed_count += 1
            logger.error(
                "Failed to send %s for feedback %s to %s: apprise status %s",
                message.kind,
                message.feedback_id,
                mask_url(message.url),
                result.status.name,
            )

    async def __del__(self) -> None:
        # Serve awaits this when it stops the replica: send what is queued, within a bound.
        waiting = self._queue.qsize()
        if waiting and self._worker is not None and not self._worker.done():
            logger.info("Sending %d queued notification(s) before the replica stops", waiting)
            try:
                await asyncio.wait_for(self._queue.join(), SHUTDOWN_DRAIN_TIMEOUT_S)
            except asyncio.TimeoutError:
                logger.error(
                    "Stopped with %d notification(s) unsent after %.0f s", self._queue.qsize(), SHUTDOWN_DRAIN_TIMEOUT_S
                )
        if self._worker is not None:
            self._worker.cancel()
        logger.info("Notification replica stopped: %d sent, %d failed", self.sent_count, self.failed_count)

    def health(self) -> dict[str, object]:
        return {
            "status": "ok",
            "queued": self._queue.qsize(),
            "sent": self.sent_count,
            "failed": self.failed_count,
        }


def _with_recipient(url: str, address: str) -> str:
    """Return the apprise mail URL with `to` set to this customer's address."""
    parts = urlsplit(url)
    query = [(key, value) for key, value in parse_qsl(parts.query) if key != "to"]
    query.append(("to", address))
    return urlunsplit(parts._replace(query=urlencode(query)))
