"""Which notifications a feedback owes, the retry backoff and the circuit breaker."""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timezone

import pytest

from feedbackbot.notify import CUSTOMER_TARGET, CircuitBreaker, NotificationPolicy, admin_target_id, backoff_delay_s
from models.feedback import FeedbackRecord

POLICY = NotificationPolicy(customer_enabled=True, admin_target_ids=("admin-a", "admin-b"), alert_max_rating=2)


def record(rating: int, label: str) -> FeedbackRecord:
    return FeedbackRecord(
        id=uuid.uuid4(),
        received_at=datetime(2026, 12, 4, tzinfo=timezone.utc),
        request_id="r",
        customer_name="Ada",
        customer_email="ada@example.com",
        feedback_text="Some feedback text.",
        rating=rating,
        sentiment_label=label,
        sentiment_score=0.5,
        model_version="m",
    )


@pytest.mark.parametrize(
    ("rating", "label", "targets"),
    [
        (5, "positive", [CUSTOMER_TARGET]),
        (3, "neutral", [CUSTOMER_TARGET]),
        (2, "positive", [CUSTOMER_TARGET, "admin-a", "admin-b"]),
        (1, "negative", [CUSTOMER_TARGET, "admin-a", "admin-b"]),
        (5, "negative", [CUSTOMER_TARGET, "admin-a", "admin-b"]),
    ],
)
def test_policy_owes_expected_targets(rating: int, label: str, targets: list[str]) -> None:
    owed = POLICY.owed(record(rating, label))

    assert [item.target for item in owed] == targets
    assert [item.kind for item in owed] == ["confirmation"] + ["admin_alert"] * (len(targets) - 1)


def test_policy_without_customer_url() -> None:
    policy = NotificationPolicy(customer_enabled=False, admin_target_ids=(), alert_max_rating=2)

    assert policy.owed(record(1, "negative")) == []


def test_policy_drops_duplicate_admin_targets() -> None:
    first, second = admin_target_id("json://hooks.example.com/a"), admin_target_id("json://hooks.example.com/b")

    policy = NotificationPolicy(
        customer_enabled=True, admin_target_ids=(second, first, second, first), alert_max_rating=2
    )

    assert policy.admin_target_ids == (second, first)
    assert [item.target for item in policy.owed(record(1, "negative"))] == [CUSTOMER_TARGET, second, first]
    assert [item.target for item in policy.owed_after_enrichment(record(5, "negative"))] == [second, first]


def test_admin_target_id_hides_url() -> None:
    url = "mailtos://user:hunter2@smtp.example.com?to=ops@example.com"

    target = admin_target_id(url)

    assert target.startswith("admin-")
    assert "hunter2" not in target
    assert target == admin_target_id(url)
    assert target != admin_target_id(url + "x")


@pytest.mark.parametrize(("attempts", "ceiling"), [(1, 2.0), (2, 4.0), (3, 8.0), (10, 60.0)])
def test_backoff_doubles_up_to_max(attempts: int, ceiling: float) -> None:
    rng = random.Random(7)

    delays = [backoff_delay_s(attempts, base_s=2.0, max_s=60.0, rng=rng) for _ in range(200)]

    assert min(delays) >= ceiling / 2
    assert max(delays) <= ceiling
    assert len(set(delays)) > 100


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_threshold() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, open_s=30.0, clock=clock)

    breaker.record("smtp", success=False)
    breaker.record("smtp", success=False)
    assert breaker.wait_s("smtp") == 0.0
    breaker.record("smtp", success=False)

    assert breaker.wait_s("smtp") == 30.0
    assert breaker.wait_s("webhook") == 0.0
    clock.now += 10.0
    assert breaker.wait_s("smtp") == 20.0


def test_breaker_success_resets_count() -> None:
    breaker = CircuitBreaker(failure_threshold=2, open_s=30.0, clock=FakeClock())

    breaker.record("smtp", success=False)
    breaker.record("smtp", success=True)
    breaker.record("smtp", success=False)

    assert breaker.wait_s("smtp") == 0.0


def open_breaker(clock: FakeClock) -> CircuitBreaker:
    breaker = CircuitBreaker(failure_threshold=2, open_s=30.0, trial_wait_s=1.5, clock=clock)
    breaker.record("smtp", success=False)
    breaker.record("smtp", success=False)
    clock.now += 30.0
    return breaker


def test_breaker_allows_one_trial() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)

    assert breaker.wait_s("smtp") == 0.0
    assert breaker.wait_s("smtp") == 1.5
    assert breaker.wait_s("smtp") == 1.5


def test_successful_trial_closes_the_circuit() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    assert breaker.wait_s("smtp") == 0.0

    breaker.record("smtp", success=True)

    assert [breaker.wait_s("smtp") for _ in range(3)] == [0.0, 0.0, 0.0]
    breaker.record("smtp", success=False)
    assert breaker.wait_s("smtp") == 0.0


def test_held_back_lists_open_and_trial_targets() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, open_s=30.0, clock=clock)
    breaker.record("smtp", success=False)
    breaker.record("webhook", success=False)
    breaker.record("chat", success=True)

    assert sorted(breaker.held_back()) == ["smtp", "webhook"]
    clock.now += 30.0
    assert breaker.held_back() == []
    assert breaker.wait_s("smtp") == 0.0
    assert breaker.held_back() == ["smtp"]


def test_failed_trial_opens_the_circuit_again() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    assert breaker.wait_s("smtp") == 0.0

    breaker.record("smtp", success=False)

    assert breaker.wait_s("smtp") == 30.0
    clock.now += 30.0
    assert breaker.wait_s("smtp") == 0.0
    assert breaker.wait_s("smtp") == 1.5


def test_policy_adds_alert_for_negative_sentiment_found_later() -> None:
    pending = record(4, "positive").model_copy(update={"sentiment_label": None, "sentiment_score": None})
    assert [item.kind for item in POLICY.owed(pending)] == ["confirmation"]

    negative = pending.model_copy(update={"sentiment_label": "negative", "sentiment_score": 0.1})
    positive = pending.model_copy(update={"sentiment_label": "positive", "sentiment_score": 0.9})
    low_rating = record(1, "negative")

    assert [item.target for item in POLICY.owed_after_enrichment(negative)] == ["admin-a", "admin-b"]
    assert POLICY.owed_after_enrichment(positive) == []
    # A low rating was alerted when the row was stored, so sentiment adds nothing.
    assert POLICY.owed_after_enrichment(low_rating) == []
