"""Notification policy: what a stored feedback owes, the retry schedule, the circuit breaker.

Persistence writes the owed notifications to the outbox in the same transaction as the
feedback row, so they are decided here from the row and the configured targets. Targets
are stored by id, never by URL, so no SMTP password reaches the database.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import time
from dataclasses import dataclass
from typing import Callable

from models.feedback import FeedbackRecord, OwedNotification

logger = logging.getLogger("ray.serve")

CUSTOMER_TARGET = "customer"


def set_thread_cpu_priority(priority: str) -> str:
    """Apply a sender's CPU priority, "idle" or "normal", to the calling thread and return the one in force.

    Linux applies a scheduling policy per thread, and threads inherit it from the thread
    that starts them. Called from a notification replica's event loop thread, it covers the
    loop and the worker threads that apprise starts to send mail, but not Ray's own threads,
    which keep responding to the controller's health checks. The replica owns its Ray worker
    process, so no other deployment is touched.
    """
    if priority == "normal":
        return "normal"

    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError) as error:
        logger.warning("Failed to give the outbox sender idle CPU priority, keeping normal priority: %s", error)
        return "normal"
    return "idle"


def admin_target_id(url: str) -> str:
    """Return the stable id of an admin apprise URL: a hash, so the URL itself stays secret."""
    return "admin-" + hashlib.sha256(url.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class NotificationPolicy:
    """Targets that are configured and the rating at or below which admins are alerted.

    `admin_target_ids` keeps the first of equal ids, in the given order.
    """

    customer_enabled: bool
    admin_target_ids: tuple[str, ...]
    alert_max_rating: int

    def __post_init__(self) -> None:
        # Equal admin URLs give equal target ids. One alert per target keeps each outbox entry
        # unique by (feedback_id, target, created_at), the row key of the Parquet snapshots.
        unique = tuple(dict.fromkeys(self.admin_target_ids))
        if len(unique) < len(self.admin_target_ids):
            logger.warning(
                "Ignored %d duplicate admin notify URL(s), so each admin target gets one alert",
                len(self.admin_target_ids) - len(unique),
            )
        object.__setattr__(self, "admin_target_ids", unique)

    def owed(self, record: FeedbackRecord) -> list[OwedNotification]:
        """Return the notifications that this feedback owes, in sending order.

        A record without sentiment yet owes an admin alert only for its rating;
        `owed_after_enrichment` adds the alert for negative sentiment once it is scored.
        """
        owed = []
        if self.customer_enabled:
            owed.append(OwedNotification(kind="confirmation", target=CUSTOMER_TARGET))
        if self._needs_alert(record):
            owed.extend(self._alerts())
        return owed

    def owed_after_enrichment(self, record: FeedbackRecord) -> list[OwedNotification]:
        """Return what a record stored without sentiment owes in addition, now that it has one."""
        if record.rating <= self.alert_max_rating or not self._needs_alert(record):
            return []
        return self._alerts()

    def _needs_alert(self, record: FeedbackRecord) -> bool:
        return record.rating <= self.alert_max_rating or record.sentiment_label == "negative"

    def _alerts(self) -> list[OwedNotification]:
        return [OwedNotification(kind="admin_alert", target=target) for target in self.admin_target_ids]


def backoff_delay_s(attempts: int, *, base_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Return the wait before the next try after `attempts` failed tries.

    Exponential with full jitter: a uniform draw between half and all of
    min(max_s, base_s * 2 ** (attempts - 1)), so that retries of many entries spread out.
    """
    ceiling = min(max_s, base_s * 2 ** max(attempts - 1, 0))
    draw = (rng or random).uniform(0.5, 1.0)
    return ceiling * draw


class CircuitBreaker:
    """A circuit per target: closed, open, then half-open with a single trial send.

    `failure_threshold` failures in a row open a target's circuit for `open_s` seconds,
    during which `wait_s` returns how long callers hold its entries back. After that one caller
    gets a trial send (half-open) while the others keep waiting `trial_wait_s`; a
    successful trial closes the circuit and a failed one opens it again.
    """

    def __init__(
        self,
        failure_threshold: int,
        open_s: float,
        *,
        trial_wait_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._threshold = failure_threshold
        self._open_s = open_s
        self._trial_wait_s = trial_wait_s
        self._failures: dict[str, int] = {}
        self._open_until: dict[str, float] = {}
        self._trial_running: set[str] = set()

    def wait_s(self, target: str) -> float:
        """Return 0 when a send to the target may go ahead now, else the seconds to hold it back.

        A 0 after the open period makes this caller the trial: it must call `record` for
        the target when its send is done.
        """
        if target not in self._open_until:
            return 0.0
        remaining = self._open_until[target] - self._clock()
        if remaining > 0:
            return remaining
        if target in self._trial_running:
            return self._trial_wait_s
        self._trial_running.add(target)
        logger.info("Trying target %s once after its circuit was open for %.0f s", target, self._open_s)
        return 0.0

    def held_back(self) -> list[str]:
        """Return the targets whose entries must wait now: open, or with a trial in flight."""
        now = self._clock()
        return [
            target
            for target, open_until in self._open_until.items()
            if open_until > now or target in self._trial_running
        ]

    def record(self, target: str, success: bool) -> None:
        """Count the result of one send to the target."""
        was_trial = target in self._trial_running
        self._trial_running.discard(target)
        if success:
            self._failures.pop(target, None)
            if self._open_until.pop(target, None) is not None:
                logger.info("Closed the circuit of target %s after a successful send", target)
            return

        failures = self._failures.get(target, 0) + 1
        self._failures[target] = failures
        if was_trial or failures == self._threshold:
            self._open_until[target] = self._clock() + self._open_s
            logger.warning("Opened the circuit of target %s for %.0f s after %d failures", target, self._open_s, failures)
