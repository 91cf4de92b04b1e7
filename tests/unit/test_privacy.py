"""Export, erasure and retention against real DuckDB files, and the snapshot rewrite that follows them."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import duckdb
import pytest

from feedbackbot import analysis
from feedbackbot.errors import SettingsError, SnapshotError
from feedbackbot.settings import AppSettings, RetentionSettings, load_settings
from feedbackbot.snapshot_manifest import read_manifest
from feedbackbot.snapshot_settings import SnapshotSettings
from feedbackbot.snapshots import REWRITE_MARKER_NAME, TEMP_SUFFIX, SnapshotPublisher
from feedbackbot.store import MIGRATIONS, SCHEMA_STATEMENTS, FeedbackStore
from models.feedback import DeliveryResult, IdempotencyClaim, OwedNotification
from models.privacy import ErasureRequest, email_sha256
from tests.unit.snapshot_data import START, make_record

ADDRESS = "Erase.Me@Example.com"
OTHER = "keep.me@example.com"
NOW = START + timedelta(days=400)
REWRITE_DEADLINE_S = 60.0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FeedbackStore]:
    opened = FeedbackStore.open(tmp_path / "feedback.duckdb")
    yield opened
    opened.close()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "snapshots"


@pytest.fixture
def publisher(folder: Path) -> Iterator[SnapshotPublisher]:
    opened = SnapshotPublisher.open(SnapshotSettings(snapshot_dir=str(folder), snapshot_compaction_deltas=3))
    yield opened
    opened.close()


def claim(key: str) -> IdempotencyClaim:
    return IdempotencyClaim(key=key, scope="key-1", body_sha256="b" * 64)


def submit(store: FeedbackStore, *, email: str, key: str | None = None, days_old: float = 0, **changes: object):
    """Commit one row with a confirmation and an admin alert, as ingest would; return the record."""
    record = make_record(customer_email=email, received_at=NOW - timedelta(days=days_old), **changes)
    owed = [OwedNotification(kind="confirmation", target="customer"), OwedNotification(kind="admin_alert", target="admin-1")]
    outcome = store.commit_submissions(
        [(record, claim(key) if key else None, owed)], now=record.received_at, idempotency_window_s=10 * 86_400 * 365
    )[0]
    assert outcome.status == "created"
    return record


def table_rows(store: FeedbackStore, query: str, parameters: list[object] | None = None) -> list[tuple]:
    return store._connection.execute(query, parameters or []).fetchall()


def snapshot_ids(folder: Path) -> set[str]:
    with analysis.connect(folder) as connection:
        return {row[0] for row in connection.execute("SELECT id::VARCHAR FROM feedback").fetchall()}


def listed_values(folder: Path, table: str, column: str) -> set[object]:
    """Return every value of `column` in every file that the manifest lists for `table`."""
    manifest = read_manifest(folder)
    paths = [str(folder / f.path) for f in manifest.files(table)]
    rows = duckdb.execute(f"SELECT {column} FROM read_parquet(?, union_by_name = true)", [paths]).fetchall()
    return {row[0] for row in rows}


def rewrite(store: FeedbackStore, publisher: SnapshotPublisher, reason: str = "test") -> None:
    """Request a rewrite, start it with a publish and wait for it to install its files."""
    publisher.request_rewrite(reason)
    publisher.publish(store._connection)
    assert publisher.wait_for_rewrite(REWRITE_DEADLINE_S), "the snapshot rewrite did not finish in time"


# -- export ---------------------------------------------------------------------------------


def test_export_returns_rows_of_address(store: FeedbackStore) -> None:
    mine = submit(store, email=ADDRESS, key="k-1")
    submit(store, email=OTHER)

    exported = store.export_address("erase.me@example.com")

    assert [row["id"] for row in exported.feedback] == [mine.id]
    assert exported.feedback[0]["customer_email"] == ADDRESS
    assert {row["feedback_id"] for row in exported.outbox} == {mine.id}
    assert len(exported.outbox) == 2
    assert [row["feedback_id"] for row in exported.idempotency_keys] == [mine.id]
    assert exported.erasures == []
    assert exported.email_sha256 == email_sha256(ADDRESS)


def test_export_lists_earlier_erasures(store: FeedbackStore) -> None:
    store.erase_address(ADDRESS, reason="customer request", request_id="req-1", now=NOW)

    exported = store.export_address(ADDRESS)

    assert len(exported.erasures) == 1
    assert exported.erasures[0]["reason"] == "customer request"
    assert exported.feedback == []


def test_export_serialises_to_json(store: FeedbackStore) -> None:
    submit(store, email=ADDRESS)

    body = store.export_address(ADDRESS).model_dump(mode="json")

    assert isinstance(body["feedback"][0]["id"], str)
    assert isinstance(body["feedback"][0]["received_at"], str)


# -- erase ----------------------------------------------------------------------------------


def test_erase_deletes_rows_outbox_and_keys(store: FeedbackStore) -> None:
    first = submit(store, email=ADDRESS, key="k-1")
    second = submit(store, email=ADDRESS.lower(), key="k-2")
    kept = submit(store, email=OTHER, key="k-3")

    result = store.erase_address(ADDRESS, reason="customer request", request_id="req-9", now=NOW)

    assert (result.feedback_rows, result.outbox_rows, result.idempotency_keys) == (2, 4, 2)
    assert set(result.feedback_ids) == {first.id, second.id}
    assert store.get(first.id) is None
    assert store.get(second.id) is None
    assert store.get(kept.id) == kept
    assert table_rows(store, "SELECT DISTINCT feedback_id FROM outbox") == [(kept.id,)]
    assert table_rows(store, "SELECT feedback_id FROM idempotency_keys") == [(kept.id,)]


def test_erase_records_hash_not_address(store: FeedbackStore) -> None:
    submit(store, email=ADDRESS)

    result = store.erase_address(ADDRESS, reason="customer request", request_id="req-9", now=NOW)

    rows = table_rows(store, "SELECT id, request_id, email_sha256, reason, feedback_rows, outbox_rows FROM erasures")
    assert rows == [(result.erasure_id, "req-9", email_sha256(ADDRESS), "customer request", 1, 2)]
    for table in ("feedback", "outbox", "idempotency_keys", "erasures", "retention_runs"):
        columns = [name for name, kind, *_ in table_rows(store, f"DESCRIBE {table}") if kind == "VARCHAR"]
        for column in columns:
            hits = table_rows(store, f"SELECT count(*) FROM {table} WHERE lower({column}) LIKE ?", ["%erase.me%"])
            assert hits == [(0,)], f"{table}.{column} still contains the address"


def test_erase_unknown_address_recorded(store: FeedbackStore) -> None:
    submit(store, email=OTHER)

    result = store.erase_address("nobody@example.com", reason="customer request", request_id="req-1", now=NOW)

    assert (result.feedback_rows, result.outbox_rows, result.idempotency_keys) == (0, 0, 0)
    assert table_rows(store, "SELECT email_sha256 FROM erasures") == [(email_sha256("nobody@example.com"),)]
    assert store.count() == 1


def test_replayed_key_after_erasure_stores_new_row(store: FeedbackStore) -> None:
    erased = submit(store, email=ADDRESS, key="k-1")
    store.erase_address(ADDRESS, reason="customer request", request_id="req-1", now=NOW)
    assert store.find_claim(claim("k-1"), now=NOW, idempotency_window_s=86_400) is None

    replay = make_record(customer_email=ADDRESS, received_at=NOW)
    outcome = store.commit_submissions([(replay, claim("k-1"), [])], now=NOW, idempotency_window_s=86_400)[0]

    assert outcome.status == "created"
    assert outcome.record.id == replay.id
    assert store.get(erased.id) is None


def test_erasure_request_normalises_address() -> None:
    request = ErasureRequest.model_validate({"email": "  Erase.Me@EXAMPLE.com "})

    assert request.email == "Erase.Me@example.com"
    assert request.reason == "data subject request"


@pytest.mark.parametrize(
    "body", [{}, {"email": "not-an-address"}, {"email": 5}, {"email": "a@example.com", "extra": 1}, {"email": "a@example.com", "reason": ""}]
)
def test_erasure_request_rejects_bad_body(body: dict) -> None:
    with pytest.raises(ValueError):
        ErasureRequest.model_validate(body)


# -- retention ------------------------------------------------------------------------------


def test_retention_delete_removes_old_rows(store: FeedbackStore) -> None:
    old = submit(store, email=ADDRESS, key="k-old", days_old=40)
    recent = submit(store, email=ADDRESS, key="k-new", days_old=5)

    result = store.apply_retention(cutoff=NOW - timedelta(days=30), mode="delete", now=NOW)

    assert (result.feedback_rows, result.outbox_rows, result.idempotency_keys) == (1, 2, 1)
    assert store.get(old.id) is None
    assert store.get(recent.id) == recent
    assert table_rows(store, "SELECT DISTINCT feedback_id FROM outbox") == [(recent.id,)]
    assert table_rows(store, "SELECT mode, feedback_rows FROM retention_runs") == [("delete", 1)]


def test_retention_anonymise_blanks_personal_fields(store: FeedbackStore) -> None:
    old = submit(store, email=ADDRESS, days_old=40, rating=2)
    recent = submit(store, email=OTHER, days_old=5)
    sent, failed = [entry.id for entry in store.list_outbox(status="pending", limit=10) if entry.feedback_id == old.id]
    store.finish_notifications(
        [
            DeliveryResult(entry_id=sent, outcome="sent"),
            DeliveryResult(entry_id=failed, outcome="dead", error="550 mailbox erase.me@example.com unknown"),
        ],
        now=NOW,
    )

    result = store.apply_retention(cutoff=NOW - timedelta(days=30), mode="anonymise", now=NOW)

    anonymised = store.get(old.id)
    assert result.feedback_rows == 1
    assert (anonymised.customer_name, anonymised.customer_email, anonymised.feedback_text) == (None, None, None)
    assert (anonymised.rating, anonymised.sentiment_label, anonymised.received_at) == (2, old.sentiment_label, old.received_at)
    assert table_rows(store, "SELECT anonymised_at FROM feedback WHERE id = ?", [old.id]) == [(NOW,)]
    assert table_rows(store, "SELECT id, last_error FROM outbox WHERE feedback_id = ?", [old.id]) == [(sent, None)]
    assert result.outbox_rows == 1
    assert store.get(recent.id) == recent


def test_retention_anonymise_deletes_pending_outbox(store: FeedbackStore) -> None:
    old = submit(store, email=ADDRESS, days_old=40)

    result = store.apply_retention(cutoff=NOW - timedelta(days=30), mode="anonymise", now=NOW)

    assert result.outbox_rows == 2
    assert table_rows(store, "SELECT count(*) FROM outbox WHERE feedback_id = ?", [old.id]) == [(0,)]


def test_retention_anonymise_skips_done_rows(store: FeedbackStore) -> None:
    submit(store, email=ADDRESS, days_old=40)
    store.apply_retention(cutoff=NOW - timedelta(days=30), mode="anonymise", now=NOW)

    again = store.apply_retention(cutoff=NOW - timedelta(days=30), mode="anonymise", now=NOW)

    assert (again.feedback_rows, again.outbox_rows, again.idempotency_keys) == (0, 0, 0)
    assert not again.changed
    assert table_rows(store, "SELECT count(*) FROM retention_runs") == [(2,)]


def test_anonymised_row_not_scored_later(store: FeedbackStore) -> None:
    submit(store, email=ADDRESS, days_old=40, sentiment_label=None, sentiment_score=None, model_version=None)

    store.apply_retention(cutoff=NOW - timedelta(days=30), mode="anonymise", now=NOW)

    assert store.pending_enrichment(limit=10, max_attempts=5) == []
    assert store.enrichment_counts(max_attempts=5) == {"pending": 0, "given_up": 0}


def test_retention_settings_default_keeps_forever() -> None:
    settings = load_settings(AppSettings, {}, environ={}).retention()

    assert settings == RetentionSettings(retention_days=0, retention_mode="delete", retention_interval_s=3600.0)


@pytest.mark.parametrize(("key", "value"), [("retention_mode", "shred"), ("retention_days", -1), ("retention_interval_s", 0)])
def test_retention_settings_rejected(key: str, value: object) -> None:
    with pytest.raises(SettingsError, match=key):
        load_settings(AppSettings, {key: value}, environ={})


# -- migration ------------------------------------------------------------------------------


def test_version_2_file_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "v2.duckdb"
    old = duckdb.connect(str(path))
    for statement in SCHEMA_STATEMENTS + MIGRATIONS[2]:
        old.execute(statement)
    old.execute("INSERT INTO schema_version (version) VALUES (1), (2)")
    record = make_record(customer_email=ADDRESS)
    old.execute(
        "INSERT INTO feedback (id, received_at, request_id, customer_name, customer_email, feedback_text, "
        "rating, sentiment_label, sentiment_score, model_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [record.id, record.received_at, record.request_id, record.customer_name, record.customer_email,
         record.feedback_text, record.rating, record.sentiment_label, record.sentiment_score, record.model_version],
    )  # fmt: skip
    old.close()

    store = FeedbackStore.open(path)
    try:
        assert store.get(record.id) == record
        assert table_rows(store, "SELECT version FROM schema_version ORDER BY version") == [(1,), (2,), (3,)]
        assert table_rows(store, "SELECT anonymised_at FROM feedback") == [(None,)]
        assert store.erase_address(ADDRESS, reason="test", request_id="req-1", now=NOW).feedback_rows == 1
    finally:
        store.close()


def test_migrated_file_reopens_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "feedback.duckdb"
    FeedbackStore.open(path).close()

    store = FeedbackStore.open(path)
    try:
        assert table_rows(store, "SELECT version FROM schema_version ORDER BY version") == [(1,), (2,), (3,)]
    finally:
        store.close()


# -- snapshots ------------------------------------------------------------------------------


def test_rewrite_drops_erased_rows(store: FeedbackStore, publisher: SnapshotPublisher, folder: Path) -> None:
    erased = submit(store, email=ADDRESS)
    kept = submit(store, email=OTHER)
    publisher.publish(store._connection)
    assert str(erased.id) in snapshot_ids(folder)

    store.erase_address(ADDRESS, reason="test", request_id="req-1", now=NOW)
    rewrite(store, publisher)

    assert snapshot_ids(folder) == {str(kept.id)}
    assert ADDRESS not in listed_values(folder, "feedback", "customer_email")
    assert erased.id not in listed_values(folder, "outbox", "feedback_id")
    assert publisher.rewrite_pending is False
    assert publisher.rewrite_error is None


def test_rewrite_retires_old_files(store: FeedbackStore, publisher: SnapshotPublisher, folder: Path) -> None:
    submit(store, email=ADDRESS)
    publisher.publish(store._connection)
    submit(store, email=OTHER)
    publisher.publish(store._connection)
    before = read_manifest(folder)
    old_paths = {f.path for table in ("feedback", "outbox") for f in before.files(table)}

    store.erase_address(ADDRESS, reason="test", request_id="req-1", now=NOW)
    rewrite(store, publisher)

    after = read_manifest(folder)
    assert {r.path for r in after.retired} >= old_paths
    assert [f.kind for f in after.files("feedback")] == ["base"]
    assert after.generation > before.generation


def test_rewrite_drops_anonymised_values(store: FeedbackStore, publisher: SnapshotPublisher, folder: Path) -> None:
    old = submit(store, email=ADDRESS, days_old=40)
    publisher.publish(store._connection)

    store.apply_retention(cutoff=NOW - timedelta(days=30), mode="anonymise", now=NOW)
    rewrite(store, publisher)

    assert listed_values(folder, "feedback", "customer_email") == {None}
    assert listed_values(folder, "feedback", "feedback_text") == {None}
    assert str(old.id) in snapshot_ids(folder)


def test_rewrite_keeps_rows_committed_meanwhile(store: FeedbackStore, publisher: SnapshotPublisher, folder: Path) -> None:
    submit(store, email=ADDRESS)
    publisher.publish(store._connection)
    store.erase_address(ADDRESS, reason="test", request_id="req-1", now=NOW)
    publisher.request_rewrite("test")
    publisher.publish(store._connection)

    # The writer commits and publishes while the rewrite may still be copying.
    later = [submit(store, email=OTHER) for _ in range(5)]
    publisher.publish(store._connection)
    assert publisher.wait_for_rewrite(REWRITE_DEADLINE_S)
    publisher.publish(store._connection)

    assert snapshot_ids(folder) == {str(record.id) for record in later}


def test_rewrite_request_survives_restart(store: FeedbackStore, folder: Path) -> None:
    settings = SnapshotSettings(snapshot_dir=str(folder))
    submit(store, email=ADDRESS)
    first = SnapshotPublisher.open(settings)
    first.publish(store._connection)
    store.erase_address(ADDRESS, reason="test", request_id="req-1", now=NOW)
    first.request_rewrite("test")
    first.close()
    assert (folder / REWRITE_MARKER_NAME).exists()

    second = SnapshotPublisher.open(settings)
    try:
        assert second.rewrite_pending
        second.publish(store._connection)
        assert second.wait_for_rewrite(REWRITE_DEADLINE_S)
        assert snapshot_ids(folder) == set()
        assert not (folder / REWRITE_MARKER_NAME).exists()
    finally:
        second.close()


def test_compaction_waits_for_rewrite(store: FeedbackStore, publisher: SnapshotPublisher, folder: Path) -> None:
    for _ in range(4):
        submit(store, email=OTHER)
        publisher.publish(store._connection)
    publisher.request_rewrite("test")

    report = publisher.compact()

    assert report.files == ()
    publisher.publish(store._connection)
    assert publisher.wait_for_rewrite(REWRITE_DEADLINE_S)
    assert publisher.compact(force=True).files == ()


def test_readers_never_see_partial_files(store: FeedbackStore, publisher: SnapshotPublisher, folder: Path) -> None:
    publisher.publish(store._connection)
    stop = threading.Event()
    failures: list[BaseException] = []

    def read_until_stopped() -> None:
        while not stop.is_set():
            try:
                manifest = read_manifest(folder)
                for table in ("feedback", "outbox"):
                    for listed in manifest.files(table):
                        assert not listed.path.endswith(TEMP_SUFFIX)
                        duckdb.execute("SELECT count(*) FROM read_parquet(?)", [str(folder / listed.path)]).fetchall()
            except (duckdb.Error, OSError, SnapshotError, AssertionError) as error:
                failures.append(error)
                return

    reader = threading.Thread(target=read_until_stopped)
    reader.start()
    try:
        for round_number in range(5):
            address = f"round{round_number}@example.com"
            for _ in range(20):
                submit(store, email=address)
            publisher.publish(store._connection)
            store.erase_address(address, reason="test", request_id=f"req-{round_number}", now=NOW)
            rewrite(store, publisher)
            assert snapshot_ids(folder) == set()
    finally:
        stop.set()
        reader.join()

    assert failures == []


def test_erased_ids_absent_from_every_listed_file(store: FeedbackStore, publisher: SnapshotPublisher, folder: Path) -> None:
    erased = [submit(store, email=ADDRESS) for _ in range(3)]
    for _ in range(3):
        submit(store, email=OTHER)
        publisher.publish(store._connection)

    store.erase_address(ADDRESS, reason="test", request_id="req-1", now=NOW)
    rewrite(store, publisher)

    assert {record.id for record in erased} & listed_values(folder, "feedback", "id") == set()
    assert len(listed_values(folder, "feedback", "id")) == 3


def test_erasure_request_matches_stored_idn_form() -> None:
    request = ErasureRequest(email="User@Bücher.example")

    # Submissions store the domain in its ASCII form, so the request must use that form too.
    assert request.email.endswith("@xn--bcher-kva.example")
