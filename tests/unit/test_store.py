"""The feedback table in a real DuckDB file: schema, batched inserts, constraints."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pytest

from feedbackbot.errors import StoreError, StoreUnavailable
from feedbackbot.store import SCHEMA_STATEMENTS, SCHEMA_VERSION, FeedbackStore
from models.feedback import DeliveryResult, FeedbackRecord, IdempotencyClaim, OwedNotification, Sentiment


def make_record(**changes: object) -> FeedbackRecord:
    values: dict[str, object] = {
        "id": uuid.uuid4(),
        "received_at": datetime(2026, 12, 4, 12, 30, 15, 123456, tzinfo=timezone.utc),
        "request_id": "req-" + uuid.uuid4().hex[:8],
        "customer_name": "Zoë O'Brien",
        "customer_email": "zoe@example.com",
        "feedback_text": "Robert'); DROP TABLE feedback;-- was <b>great</b>",
        "rating": 4,
        "sentiment_label": "positive",
        "sentiment_score": 0.91,
        "model_version": "test-model",
    }
    values.update(changes)
    return FeedbackRecord(**values)


@pytest.fixture
def store(tmp_path: Path):
    opened = FeedbackStore.open(tmp_path / "nested" / "feedback.duckdb")
    yield opened
    opened.close()


def test_insert_then_get_roundtrip(store: FeedbackStore) -> None:
    record = make_record()

    store.insert_many([record])

    assert store.get(record.id) == record
    assert store.count() == 1


def test_get_unknown_id_returns_none(store: FeedbackStore) -> None:
    assert store.get(uuid.uuid4()) is None


def test_batch_inserted_in_one_transaction(store: FeedbackStore) -> None:
    records = [make_record(rating=rating) for rating in (1, 2, 3, 4, 5)]

    store.insert_many(records)

    assert store.count() == 5
    for record in records:
        assert store.get(record.id) == record


def test_failed_batch_leaves_no_row(store: FeedbackStore) -> None:
    existing = make_record()
    store.insert_many([existing])
    fresh = make_record()

    with pytest.raises(StoreUnavailable, match="Nothing of this batch was stored"):
        store.insert_many([fresh, make_record(id=existing.id)])

    assert store.get(fresh.id) is None
    assert store.count() == 1


def test_store_usable_after_failed_batch(store: FeedbackStore) -> None:
    existing = make_record()
    store.insert_many([existing])
    with pytest.raises(StoreUnavailable):
        store.insert_many([make_record(id=existing.id)])

    later = make_record()
    store.insert_many([later])

    assert store.get(later.id) == later


def test_check_constraint_rejects_bad_rating(store: FeedbackStore) -> None:
    record = make_record().model_copy(update={"rating": 9})

    with pytest.raises(StoreUnavailable):
        store.insert_many([record])

    assert store.count() == 0


def test_sql_like_text_stored_verbatim(store: FeedbackStore) -> None:
    record = make_record()
    store.insert_many([record])

    assert store.get(record.id).feedback_text == "Robert'); DROP TABLE feedback;-- was <b>great</b>"
    assert store.count() == 1


def test_reopen_keeps_rows_and_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "feedback.duckdb"
    record = make_record()
    first = FeedbackStore.open(path)
    first.insert_many([record])
    first.close()

    second = FeedbackStore.open(path)

    assert second.get(record.id) == record
    second.close()
    connection = duckdb.connect(str(path), read_only=True)
    assert connection.execute("SELECT max(version) FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    connection.close()


def test_newer_schema_rejected(tmp_path: Path) -> None:
    path = tmp_path / "feedback.duckdb"
    FeedbackStore.open(path).close()
    connection = duckdb.connect(str(path))
    connection.execute("INSERT INTO schema_version (version) VALUES (?)", [SCHEMA_VERSION + 1])
    connection.close()

    with pytest.raises(StoreError, match="newer than this code"):
        FeedbackStore.open(path)


def test_unusable_path_named_in_error(tmp_path: Path) -> None:
    blocked = tmp_path / "is-a-directory.duckdb"
    blocked.mkdir()

    with pytest.raises(StoreError, match="is-a-directory.duckdb"):
        FeedbackStore.open(blocked)


def test_received_at_stays_utc(store: FeedbackStore) -> None:
    record = make_record()
    store.insert_many([record])

    stored = store.get(record.id)

    assert stored.received_at.utcoffset().total_seconds() == 0
    assert stored.received_at == record.received_at


NOW = datetime(2026, 12, 4, 12, 0, tzinfo=timezone.utc)
DAY_S = 24 * 3600


def claim(key: str, body: str = "a" * 64) -> IdempotencyClaim:
    return IdempotencyClaim(key=key, body_sha256=body)


def test_claim_created_then_replayed(store: FeedbackStore) -> None:
    first = make_record()
    retry = make_record()

    created = store.commit_submissions([(first, claim("k1"), [])], now=NOW, idempotency_window_s=DAY_S)
    replayed = store.commit_submissions([(retry, claim("k1"), [])], now=NOW, idempotency_window_s=DAY_S)

    assert [outcome.status for outcome in created] == ["created"]
    assert [outcome.status for outcome in replayed] == ["replayed"]
    assert replayed[0].record == first
    assert store.get(retry.id) is None
    assert store.count() == 1


def test_claim_other_body_conflicts(store: FeedbackStore) -> None:
    store.commit_submissions([(make_record(), claim("k2"), [])], now=NOW, idempotency_window_s=DAY_S)
    other = make_record()

    outcomes = store.commit_submissions([(other, claim("k2", "b" * 64), [])], now=NOW, idempotency_window_s=DAY_S)

    assert outcomes[0].status == "conflict"
    assert outcomes[0].record is None
    assert store.get(other.id) is None


def test_same_key_in_two_scopes_stores_both(store: FeedbackStore) -> None:
    first, second = make_record(), make_record()
    mine = IdempotencyClaim(key="k5", scope="k-aaaa", body_sha256="a" * 64)
    theirs = IdempotencyClaim(key="k5", scope="k-bbbb", body_sha256="b" * 64)

    outcomes = store.commit_submissions([(first, mine, []), (second, theirs, [])], now=NOW, idempotency_window_s=DAY_S)

    assert [outcome.status for outcome in outcomes] == ["created", "created"]
    assert store.find_claim(theirs, now=NOW, idempotency_window_s=DAY_S).record == second
    assert store.count() == 2


def test_same_key_twice_in_one_batch(store: FeedbackStore) -> None:
    first, second, third = make_record(), make_record(), make_record()

    outcomes = store.commit_submissions(
        [(first, claim("k3"), []), (second, claim("k3"), []), (third, claim("k3", "c" * 64), [])],
        now=NOW,
        idempotency_window_s=DAY_S,
    )

    assert [outcome.status for outcome in outcomes] == ["created", "replayed", "conflict"]
    assert outcomes[1].record == first
    assert store.count() == 1


def test_expired_claim_stores_again(store: FeedbackStore) -> None:
    store.commit_submissions([(make_record(), claim("k4"), [])], now=NOW, idempotency_window_s=DAY_S)
    later = make_record()

    outcomes = store.commit_submissions(
        [(later, claim("k4"), [])], now=NOW + timedelta(seconds=DAY_S + 1), idempotency_window_s=DAY_S
    )

    assert outcomes[0].status == "created"
    assert store.count() == 2


def test_find_claim_matches_commit(store: FeedbackStore) -> None:
    original = make_record()
    store.commit_submissions([(original, claim("k5"), [])], now=NOW, idempotency_window_s=DAY_S)

    same = store.find_claim(claim("k5"), now=NOW, idempotency_window_s=DAY_S)
    other = store.find_claim(claim("k5", "d" * 64), now=NOW, idempotency_window_s=DAY_S)
    unknown = store.find_claim(claim("k6"), now=NOW, idempotency_window_s=DAY_S)

    assert same.status == "replayed"
    assert same.record == original
    assert other.status == "conflict"
    assert unknown is None


def test_find_claims_matches_find_claim(store: FeedbackStore) -> None:
    original = make_record()
    store.commit_submissions([(original, claim("k8"), [])], now=NOW, idempotency_window_s=DAY_S)
    requested = [claim("k8"), claim("k9"), claim("k8", "d" * 64), claim("k8")]

    together = store.find_claims(requested, now=NOW, idempotency_window_s=DAY_S)
    one_by_one = [store.find_claim(item, now=NOW, idempotency_window_s=DAY_S) for item in requested]
    expired = store.find_claims(requested, now=NOW + timedelta(seconds=DAY_S + 1), idempotency_window_s=DAY_S)

    assert together == one_by_one
    assert [outcome.status if outcome else None for outcome in together] == ["replayed", None, "conflict", "replayed"]
    assert together[0].record == original
    assert expired == [None] * 4


def test_purge_removes_only_expired_keys(store: FeedbackStore) -> None:
    store.commit_submissions([(make_record(), claim("old"), [])], now=NOW, idempotency_window_s=DAY_S)
    store.commit_submissions(
        [(make_record(), claim("new"), [])], now=NOW + timedelta(hours=2), idempotency_window_s=DAY_S
    )

    deleted = store.purge_idempotency_keys(older_than=NOW + timedelta(hours=1))

    assert deleted == 1
    assert store.find_claim(claim("new"), now=NOW + timedelta(hours=2), idempotency_window_s=DAY_S) is not None
    assert store.count() == 2


def test_failed_claim_batch_keeps_no_key(store: FeedbackStore) -> None:
    existing = make_record()
    store.insert_many([existing])

    with pytest.raises(StoreUnavailable):
        store.commit_submissions(
            [(make_record(), claim("k7"), []), (make_record(id=existing.id), None, [])], now=NOW, idempotency_window_s=DAY_S
        )

    assert store.find_claim(claim("k7"), now=NOW, idempotency_window_s=DAY_S) is None
    assert store.count() == 1


def owe(*targets: str) -> list[OwedNotification]:
    return [
        OwedNotification(kind="confirmation" if target == "customer" else "admin_alert", target=target)
        for target in targets
    ]


def test_outbox_written_with_row(store: FeedbackStore) -> None:
    record = make_record()

    store.commit_submissions([(record, None, owe("customer", "admin-1"))], now=NOW, idempotency_window_s=DAY_S)

    pending = store.list_outbox(status="pending", limit=10)
    assert sorted(entry.target for entry in pending) == ["admin-1", "customer"]
    assert {entry.feedback_id for entry in pending} == {record.id}
    assert {entry.attempts for entry in pending} == {0}


def test_replay_writes_no_outbox(store: FeedbackStore) -> None:
    store.commit_submissions([(make_record(), claim("o1"), owe("customer"))], now=NOW, idempotency_window_s=DAY_S)

    store.commit_submissions([(make_record(), claim("o1"), owe("customer"))], now=NOW, idempotency_window_s=DAY_S)

    assert store.outbox_counts() == {"pending": 1, "sent": 0, "dead": 0}


def test_failed_batch_writes_no_outbox(store: FeedbackStore) -> None:
    existing = make_record()
    store.insert_many([existing])

    with pytest.raises(StoreUnavailable):
        store.commit_submissions(
            [(make_record(), None, owe("customer")), (make_record(id=existing.id), None, owe("customer"))],
            now=NOW,
            idempotency_window_s=DAY_S,
        )

    assert store.outbox_counts() == {"pending": 0, "sent": 0, "dead": 0}


def test_claim_leases_entries(store: FeedbackStore) -> None:
    record = make_record()
    store.commit_submissions([(record, None, owe("customer"))], now=NOW, idempotency_window_s=DAY_S)

    first = store.claim_notifications(now=NOW, limit=10, lease_s=60)
    during_lease = store.claim_notifications(now=NOW + timedelta(seconds=30), limit=10, lease_s=60)
    after_lease = store.claim_notifications(now=NOW + timedelta(seconds=61), limit=10, lease_s=60)

    assert [claimed.record for claimed in first] == [record]
    assert during_lease == []
    assert [claimed.entry.id for claimed in after_lease] == [first[0].entry.id]


def test_claim_puts_first_tries_before_retries(store: FeedbackStore) -> None:
    store.commit_submissions([(make_record(), None, owe("admin-1"))], now=NOW, idempotency_window_s=DAY_S)
    [retried] = store.claim_notifications(now=NOW, limit=10, lease_s=60)
    retry_at = NOW + timedelta(seconds=1)
    store.finish_notifications(
        [DeliveryResult(entry_id=retried.entry.id, outcome="retry", error="down", next_attempt_at=retry_at)], now=NOW
    )
    later = NOW + timedelta(seconds=5)
    store.commit_submissions([(make_record(), None, owe("customer"))], now=later, idempotency_window_s=DAY_S)

    claimed = store.claim_notifications(now=later, limit=1, lease_s=60)

    assert [item.entry.target for item in claimed] == ["customer"]


def test_claim_skips_held_back_targets(store: FeedbackStore) -> None:
    store.commit_submissions([(make_record(), None, owe("customer", "admin-1"))], now=NOW, idempotency_window_s=DAY_S)

    claimed = store.claim_notifications(now=NOW, limit=10, lease_s=60, skip_targets=["admin-1"])
    later = store.claim_notifications(now=NOW, limit=10, lease_s=60)

    assert [item.entry.target for item in claimed] == ["customer"]
    assert [item.entry.target for item in later] == ["admin-1"]


def test_finish_records_each_outcome(store: FeedbackStore) -> None:
    store.commit_submissions(
        [(make_record(), None, owe("customer", "a", "b", "c"))], now=NOW, idempotency_window_s=DAY_S
    )
    entries = {claimed.entry.target: claimed.entry for claimed in store.claim_notifications(now=NOW, limit=10, lease_s=60)}
    later = NOW + timedelta(seconds=5)

    store.finish_notifications(
        [
            DeliveryResult(entry_id=entries["customer"].id, outcome="sent"),
            DeliveryResult(entry_id=entries["a"].id, outcome="retry", error="refused", next_attempt_at=later),
            DeliveryResult(entry_id=entries["b"].id, outcome="dead", error="refused 8 times"),
            DeliveryResult(entry_id=entries["c"].id, outcome="deferred", error="circuit open", next_attempt_at=later),
        ],
        now=NOW,
    )

    assert store.outbox_counts() == {"pending": 2, "sent": 1, "dead": 1}
    pending = {entry.target: entry for entry in store.list_outbox(status="pending", limit=10)}
    assert pending["a"].attempts == 1
    assert pending["a"].last_error == "refused"
    assert pending["c"].attempts == 0
    dead = store.list_outbox(status="dead", limit=10)
    assert [(entry.target, entry.last_error) for entry in dead] == [("b", "refused 8 times")]


def test_requeue_only_dead_entries(store: FeedbackStore) -> None:
    store.commit_submissions([(make_record(), None, owe("customer", "a"))], now=NOW, idempotency_window_s=DAY_S)
    entries = {claimed.entry.target: claimed.entry for claimed in store.claim_notifications(now=NOW, limit=10, lease_s=60)}
    store.finish_notifications([DeliveryResult(entry_id=entries["a"].id, outcome="dead", error="gone")], now=NOW)

    requeued = store.requeue_notification(entries["a"].id, now=NOW)
    not_dead = store.requeue_notification(entries["customer"].id, now=NOW)

    assert requeued.status == "pending"
    assert requeued.attempts == 0
    assert not_dead is None


def pending_record(**changes: object) -> FeedbackRecord:
    return make_record(sentiment_label=None, sentiment_score=None, model_version=None, **changes)


LATE = Sentiment(label="negative", score=0.12, model_version="late-model")


def test_version_1_file_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "v1.duckdb"
    old = duckdb.connect(str(path))
    for statement in SCHEMA_STATEMENTS:
        old.execute(statement)
    old.execute("INSERT INTO schema_version (version) VALUES (1)")
    record = make_record()
    old.execute(
        "INSERT INTO feedback (id, received_at, request_id, customer_name, customer_email, feedback_text, "
        "rating, sentiment_label, sentiment_score, model_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [record.id, record.received_at, record.request_id, record.customer_name, record.customer_email,
         record.feedback_text, record.rating, record.sentiment_label, record.sentiment_score, record.model_version],
    )  # fmt: skip
    old.close()

    store = FeedbackStore.open(path)
    waiting = pending_record()
    store.insert_many([waiting])

    assert store.get(record.id) == record
    assert store.get(waiting.id) == waiting
    store.close()
    connection = duckdb.connect(str(path), read_only=True)
    assert connection.execute("SELECT version FROM schema_version ORDER BY version").fetchall() == [(1,), (2,), (3,)]
    sequence = dict(connection.execute("SELECT id, change_seq FROM feedback").fetchall())
    assert sequence[record.id] < sequence[waiting.id]


def test_row_without_sentiment_is_listed_until_scored(store: FeedbackStore) -> None:
    scored = make_record()
    waiting = pending_record(rating=4)
    store.commit_submissions([(scored, None, []), (waiting, None, owe("customer"))], now=NOW, idempotency_window_s=DAY_S)

    assert store.pending_enrichment(limit=10, max_attempts=3) == [waiting]
    assert store.enrichment_counts(max_attempts=3) == {"pending": 1, "given_up": 0}

    updated = store.complete_enrichment([(waiting.with_sentiment(LATE), owe("admin-1"))], now=NOW)

    assert updated == 1
    assert store.get(waiting.id) == waiting.with_sentiment(LATE)
    assert store.pending_enrichment(limit=10, max_attempts=3) == []
    targets = sorted(entry.target for entry in store.list_outbox(status="pending", limit=10))
    assert targets == ["admin-1", "customer"]


def test_late_sentiment_is_stored_once(store: FeedbackStore) -> None:
    waiting = pending_record()
    store.insert_many([waiting])
    store.complete_enrichment([(waiting.with_sentiment(LATE), owe("admin-1"))], now=NOW)

    again = Sentiment(label="positive", score=0.9, model_version="other")
    updated = store.complete_enrichment([(waiting.with_sentiment(again), owe("admin-1"))], now=NOW)

    assert updated == 0
    assert store.get(waiting.id).sentiment_label == "negative"
    assert store.outbox_counts()["pending"] == 1


def test_failed_scoring_counts_tries_until_given_up(store: FeedbackStore) -> None:
    waiting = pending_record()
    store.insert_many([waiting])

    store.record_enrichment_failure([waiting.id], error_text="model down")
    assert store.pending_enrichment(limit=10, max_attempts=2) == [waiting]
    store.record_enrichment_failure([waiting.id], error_text="model down")

    assert store.pending_enrichment(limit=10, max_attempts=2) == []
    assert store.enrichment_counts(max_attempts=2) == {"pending": 0, "given_up": 1}


def test_every_outbox_change_moves_change_seq(store: FeedbackStore) -> None:
    store.commit_submissions([(make_record(), None, owe("customer"))], now=NOW, idempotency_window_s=DAY_S)
    def change_seq() -> int:
        return store._connection.execute("SELECT change_seq FROM outbox").fetchone()[0]

    created = change_seq()
    [claimed] = store.claim_notifications(now=NOW, limit=10, lease_s=60)
    leased = change_seq()
    store.finish_notifications([DeliveryResult(entry_id=claimed.entry.id, outcome="sent")], now=NOW)

    assert created < leased < change_seq()
