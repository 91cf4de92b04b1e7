"""Synthetic feedback for the snapshot, analysis and notebook tests, written through FeedbackStore."""

from __future__ import annotations

import random
import struct
import uuid
from datetime import datetime, timedelta, timezone

from feedbackbot.store import FeedbackStore
from models.feedback import DeliveryResult, FeedbackRecord, OwedNotification, Sentiment

START = datetime(2026, 11, 24, tzinfo=timezone.utc)
ADMIN_TARGET = "admin-0123456789ab"
DAY_S = 86_400.0

TEXTS = {
    "positive": (
        "Fast delivery and friendly support, thank you!",
        "The new app is lovely and checkout took a minute.",
        "Great quality, I will order again next month.",
    ),
    "neutral": (
        "The parcel arrived on the expected day, nothing more to add.",
        "Average experience; the size chart could be clearer.",
        "It works as described, packaging was plain.",
    ),
    "negative": (
        "The order arrived broken and nobody answered my emails.",
        "Terrible wait on the phone, the refund is still missing.",
        "Wrong item twice in a row, very disappointing service.",
    ),
}
SCORE_RANGES = {"negative": (0.02, 0.34), "neutral": (0.36, 0.64), "positive": (0.66, 0.98)}


def make_record(**changes: object) -> FeedbackRecord:
    """Return a scored feedback record; `changes` overrides any field."""
    values: dict[str, object] = {
        "id": uuid.uuid4(),
        "received_at": START,
        "request_id": "req-" + uuid.uuid4().hex[:8],
        "customer_name": "Zoë O'Brien",
        "customer_email": "zoe@example.com",
        "feedback_text": "Quick answer from support, thanks a lot.",
        "rating": 4,
        "sentiment_label": "positive",
        "sentiment_score": 0.91,
        "model_version": "test-model",
    }
    values.update(changes)
    return FeedbackRecord(**values)


def sentiment(label: str, score: float) -> Sentiment:
    return Sentiment(label=label, score=score, model_version="test-model")


def as_float32(value: float) -> float:
    """Return `value` rounded to the nearest float32, as the snapshot files store sentiment scores."""
    return struct.unpack("f", struct.pack("f", value))[0]


def expected_label(rating: int) -> str:
    if rating <= 2:
        return "negative"
    return "neutral" if rating == 3 else "positive"


def synthetic_records(count: int, *, days: int, seed: int, without_sentiment_share: float) -> list[FeedbackRecord]:
    """Return `count` records spread over `days` days, every rating present, some without sentiment."""
    rng = random.Random(seed)
    labels = tuple(TEXTS)
    records = []
    for index in range(count):
        rating = index % 5 + 1
        # The model agrees with the rating about four times in five.
        label = expected_label(rating) if rng.random() < 0.8 else rng.choice(labels)
        low, high = SCORE_RANGES[label]
        received_at = START + timedelta(seconds=rng.uniform(0, days * DAY_S))
        record = make_record(
            received_at=received_at,
            customer_name=f"Customer {index}",
            customer_email=f"customer{index}@example.com",
            feedback_text=rng.choice(TEXTS[label]),
            rating=rating,
            sentiment_label=label,
            sentiment_score=round(rng.uniform(low, high), 3),
        )
        if rng.random() < without_sentiment_share:
            record = record.model_copy(update={"sentiment_label": None, "sentiment_score": None, "model_version": None})
        records.append(record)
    return records


def owed_notifications(record: FeedbackRecord) -> list[OwedNotification]:
    owed = [OwedNotification(kind="confirmation", target="customer")]
    if record.rating <= 2:
        owed.append(OwedNotification(kind="admin_alert", target=ADMIN_TARGET))
    return owed


def fill_store(
    store: FeedbackStore,
    count: int = 300,
    *,
    days: int = 7,
    seed: int = 7,
    without_sentiment_share: float = 0.1,
    deliveries: int = 30,
) -> list[FeedbackRecord]:
    """Store synthetic feedback with its outbox entries, then send `deliveries` of them, one in ten failing for good.

    The other entries stay pending: the store updates them one statement at a time, which
    costs a few milliseconds each.
    """
    records = synthetic_records(count, days=days, seed=seed, without_sentiment_share=without_sentiment_share)
    now = START + timedelta(days=days)
    for first in range(0, len(records), 50):
        batch = records[first : first + 50]
        store.commit_submissions(
            [(record, None, owed_notifications(record)) for record in batch], now=now, idempotency_window_s=DAY_S
        )

    pending = [record.id for record in records if record.sentiment_label is None]
    if pending:
        store.record_enrichment_failure(pending, error_text="enrichment timed out after 5 s")

    claimed = store.claim_notifications(now=now, limit=deliveries, lease_s=60)
    results = [
        DeliveryResult(entry_id=item.entry.id, outcome="sent")
        if index % 10
        else DeliveryResult(entry_id=item.entry.id, outcome="dead", error="SMTP 550 mailbox unavailable")
        for index, item in enumerate(claimed)
    ]
    store.finish_notifications(results, now=now)
    return records
