"""Notification policy: what a stored feedback owes, the retry schedule, the circuit breaker.

Persistence writes the owed notifications to the outbox in the same transaction as the
feedback row, so they are decided here from the row and the configured targets. Targets
are stored by id, never by URL, so no SMTP password reaches the database.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from dataclasses import dataclass
from typing import Callable

from models.feedback import FeedbackRecord, OwedNotification

logger = logging.getLogger("ray.serve")

CUSTOMER_TARGET = "customer"


def admin_target_id(url: str) -> str:
    """Return the stable id of an admin apprise URL: a hash, so the URL itself stays secret."""
    return "admin-" + hashlib.sha256(url.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class NotificationPolicy:
    """Targets that are configured and the rating at or below which admins are alerted."""

    customer_enabled: bool
    admin_target_ids: tuple[str, ...]
    alert_max_rating: int

    def owed(self, record: FeedbackRecord) -> list[OwedNotification]:
        """Return the notifications that this feedback owes, in sending order."""
        owed = []
        if self.customer_enabled:
            owed.append(OwedNotification(kind="confirmation", target=CUSTOMER_TARGET))
        if record.rating <= self.alert_max_rating or record.sentiment_label == "negative":
            owed.extend(OwedNotification(kind="admin_alert", target=target) for target in self.admin_target_ids)
        return owed


def backoff_delay_s(attempts: int, *, base_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Return the wait before the next try after `attempts` failed tries.

    Exponential with full jitter: a uniform draw between half and all of
    min(max_s, base_s * 2 ** (attempts - 1)), so that retries of many entries spread out.
    """
    ceiling = min(max_s, base_s * 2 ** max(attempts - 1, 0))
    draw = (rng or random).uniform(0.5, 1.0)
    return ceiling * draw


class CircuitBreaker:
    """Consecutive failures per target; an open circuit skips the target for a while."""

    def __init__(self, failure_threshold: int, open_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._threshold = failure_threshold
        self._open_s = open_s
        self._failures: dict[str, int] = {}
        self._open_until: dict[str, float] = {}

    def open_for_s(self, target: str) -> float:
        """Return the seconds until the target's circuit closes; 0 when it is closed."""
        return max(0.0, self._open_until.get(target, 0.0) - self._clock())

    def record(self, target: str, success: bool) -> None:
        if success:
            self._failures.pop(target, None)
            self._open_until.pop(target, None)
            return
        failures = self._failures.get(target, 0) + 1
        self._failures[target] = failures
        if failures >= self._threshold:
            self._open_until[target] = self._clock() + self._open_s
            logger.warning("Opened the circuit of target %s for %.0f s after %d failures", target, self._open_s, failures)
