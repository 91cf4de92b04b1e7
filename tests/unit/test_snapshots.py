"""SnapshotPublisher against real DuckDB files: deltas, watermark, background full copies, compaction, readers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import duckdb
import pytest

from feedbackbot import analysis, snapshots
from feedbackbot.errors import SnapshotError, SnapshotNotFound
from feedbackbot.snapshot_manifest import read_manifest
from feedbackbot.snapshot_settings import SnapshotSettings
from feedbackbot.snapshots import FULL_COPY_MARKER_NAME, TEMP_SUFFIX, SnapshotPublisher
from feedbackbot.store import FeedbackStore
from models.feedback import DeliveryResult
from tests.unit.snapshot_data import (
    ADMIN_TARGET,
    START,
    as_float32,
    fill_store,
    make_record,
    owed_notifications,
    sentiment,
)

READER_DEADLINE_S = 60.0


class FakeClock:
    """Seconds since the epoch that only move when a test advances them."""

    def __init__(self) -> None:
        self.now = START.timestamp()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FeedbackStore]:
    opened = FeedbackStore.open(tmp_path / "feedback.duckdb")
    yield opened
    opened.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def open_publisher(folder: Path, clock: FakeClock | None = None, **settings: object) -> SnapshotPublisher:
    values: dict[str, object] = {"snapshot_dir": str(folder)}
    values.update(settings)
    return SnapshotPublisher.open(SnapshotSettings(**values), clock=clock or FakeClock())


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "snapshots"


@pytest.fixture
def publisher(folder: Path, clock: FakeClock) -> Iterator[SnapshotPublisher]:
    opened = open_publisher(folder, clock, snapshot_compaction_deltas=3)
    yield opened
    opened.close()


def connection_of(store: FeedbackStore) -> duckdb.DuckDBPyConnection:
    # The persistence deployment passes the same connection, on its DuckDB thread.
    return store._connection


def parquet_ids(folder: Path, relative: str) -> list[str]:
    rows = duckdb.execute(
        "SELECT id::VARCHAR FROM read_parquet(?) ORDER BY change_seq", [str(folder / relative)]
    ).fetchall()
    return [row[0] for row in rows]


def files_on_disk(folder: Path) -> set[str]:
    return {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()}


# -- publish --------------------------------------------------------------------------------


def test_first_publish_writes_empty_base_files(store: FeedbackStore, publisher: SnapshotPublisher, folder: Path) -> None:
    report = publisher.publish(connection_of(store))

    manifest = read_manifest(folder)
    assert report.full_copy_reason == "the folder has no snapshot yet"
    assert manifest.watermark == 0
    assert [f.kind for f in manifest.files("feedback")] == ["base"]
    assert [f.kind for f in manifest.files("outbox")] == ["base"]
    assert manifest.files("feedback")[0].rows == 0


def test_publish_copies_only_changed_rows(store: FeedbackStore, publisher: SnapshotPublisher, folder: Path) -> None:
    publisher.publish(connection_of(store))
    first = [make_record() for _ in range(3)]
    store.insert_many(first)

    report = publisher.publish(connection_of(store))
    second = [make_record() for _ in range(2)]
    store.insert_many(second)
    later = publisher.publish(connection_of(store))

    assert report.rows == {"feedback": 3, "outbox": 0}
    assert len(report.files) == 1
    assert parquet_ids(folder, report.files[0]) == [str(record.id) for record in first]
    assert parquet_ids(folder, later.files[0]) == [str(record.id) for record in second]
    assert [f.kind for f in read_manifest(folder).files("feedback")] == ["base", "delta", "delta"]


def test_publish_copies_outbox_with_feedback(store: FeedbackStore, publisher: SnapshotPublisher) -> None:
    publisher.publish(connection_of(store))
    record = make_record(rating=1)
    store.commit_submissions([(record, None, owed_notifications(record))], now=START, idempotency_window_s=60)

    report = publisher.publish(connection_of(store))

    assert report.rows == {"feedback": 1, "outbox": 2}
    assert {path.split("/")[0] for path in report.files} == {"feedback", "outbox"}


def test_publish_without_changes_writes_no_file(
    store: FeedbackStore, publisher: SnapshotPublisher, folder: Path, clock: FakeClock
) -> None:
    store.insert_many([make_record()])
    publisher.publish(connection_of(store))
    before = read_manifest(folder)
    clock.advance(5)

    report = publisher.publish(connection_of(store))

    after = read_manifest(folder)
    assert report.files == ()
    assert after.tables == before.tables
    assert after.generation == before.generation + 1
    assert after.checked_at - before.checked_at == timedelta(seconds=5)


def test_publish_leaves_writer_usable(store: FeedbackStore, publisher: SnapshotPublisher) -> None:
    publisher.publish(connection_of(store))

    record = make_record()
    store.insert_many([record])

    assert store.get(record.id) == record


def test_publish_inside_open_transaction_rejected(
    store: FeedbackStore, publisher: SnapshotPublisher, folder: Path
) -> None:
    publisher.publish(connection_of(store))
    record = make_record()
    connection = connection_of(store)
    connection.execute("BEGIN TRANSACTION")
    connection.execute("INSERT INTO schema_version (version) VALUES (99)")

    with pytest.raises(SnapshotError, match="between the writer's transactions"):
        publisher.publish(connection)

    # The writer's own transaction is still open and commits.
    connection.execute("COMMIT")
    assert connection.execute("SELECT count(*) FROM schema_version WHERE version = 99").fetchall() == [(1,)]
    store.insert_many([record])
    assert read_manifest(folder).watermark == 0


def test_watermark_survives_restart(store: FeedbackStore, folder: Path, clock: FakeClock) -> None:
    first = open_publisher(folder, clock)
    store.insert_many([make_record() for _ in range(4)])
    first.publish(connection_of(store))
    first.close()
    fresh = make_record()
    store.insert_many([fresh])

    second = open_publisher(folder, clock)
    report = second.publish(connection_of(store))
    second.close()

    assert report.full_copy_reason is None
    assert report.rows["feedback"] == 1
    assert parquet_ids(folder, report.files[0]) == [str(fresh.id)]
    assert read_manifest(folder).watermark == 5


def test_restart_after_store_reopen_keeps_watermark(tmp_path: Path, folder: Path, clock: FakeClock) -> None:
    path = tmp_path / "reopened.duckdb"
    store = FeedbackStore.open(path)
    publisher = open_publisher(folder, clock)
    store.insert_many([make_record(), make_record()])
    publisher.publish(connection_of(store))
    store.close()

    store = FeedbackStore.open(path)
    store.insert_many([make_record()])
    report = publisher.publish(connection_of(store))
    store.close()
    publisher.close()

    assert report.full_copy_reason is None
    assert report.rows["feedback"] == 1


def test_late_sentiment_shows_newest_version(store: FeedbackStore, publisher: SnapshotPublisher, folder: Path) -> None:
    waiting = make_record(sentiment_label=None, sentiment_score=None, model_version=None)
    store.insert_many([waiting])
    publisher.publish(connection_of(store))
    store.record_enrichment_failure([waiting.id], error_text="model timed out")
    publisher.publish(connection_of(store))
    store.complete_enrichment([(waiting.with_sentiment(sentiment("negative", 0.12)), [])], now=START)

    publisher.publish(connection_of(store))

    with analysis.connect(folder) as connection:
        rows = connection.execute(
            "SELECT sentiment_label, sentiment_score, enrichment_attempts, enrichment_error FROM feedback"
        ).fetchall()
    assert rows == [("negative", as_float32(0.12), 2, None)]
    assert sum(f.rows for f in read_manifest(folder).files("feedback")) == 3


def test_view_matches_full_window(store: FeedbackStore, publisher: SnapshotPublisher, folder: Path) -> None:
    waiting = make_record(sentiment_label=None, sentiment_score=None, model_version=None)
    unchanged = [make_record() for _ in range(5)]
    store.insert_many([waiting, *unchanged])
    publisher.publish(connection_of(store))
    store.complete_enrichment([(waiting.with_sentiment(sentiment("positive", 0.9)), [])], now=START)
    added = make_record()
    store.insert_many([added])
    publisher.publish(connection_of(store))
    files = read_manifest(folder).files("feedback")

    with analysis.connect(folder) as connection:
        from_view = connection.execute("SELECT id, sentiment_label FROM feedback ORDER BY id").fetchall()
        windowed = connection.execute(
            "SELECT id, sentiment_label FROM read_parquet(?, union_by_name = true) "
            "QUALIFY row_number() OVER (PARTITION BY id ORDER BY change_seq DESC) = 1 ORDER BY id",
            [[str(folder / f.path) for f in files]],
        ).fetchall()

    assert [f.kind for f in files] == ["base", "delta"]
    assert from_view == windowed
    assert len(from_view) == 7
    assert (waiting.id, "positive") in from_view


def test_outbox_status_change_published(store: FeedbackStore, publisher: SnapshotPublisher, folder: Path) -> None:
    record = make_record()
    store.commit_submissions([(record, None, owed_notifications(record))], now=START, idempotency_window_s=60)
    publisher.publish(connection_of(store))
    claimed = store.claim_notifications(now=START, limit=10, lease_s=60)
    store.finish_notifications([DeliveryResult(entry_id=claimed[0].entry.id, outcome="sent")], now=START)

    publisher.publish(connection_of(store))

    with analysis.connect(folder) as connection:
        rows = connection.execute("SELECT status, attempts FROM notifications").fetchall()
    assert rows == [("sent", 1)]


def test_replaced_database_gets_full_copy(tmp_path: Path, store: FeedbackStore, publisher: SnapshotPublisher, folder: Path) -> None:
    store.insert_many([make_record() for _ in range(3)])
    publisher.publish(connection_of(store))
    old_files = {f.path for f in read_manifest(folder).files("feedback")}
    other = FeedbackStore.open(tmp_path / "other.duckdb")
    kept = make_record()
    other.insert_many([kept])

    report = publisher.publish(connection_of(other))
    other.close()

    manifest = read_manifest(folder)
    assert "the database changed" in report.full_copy_reason
    assert [f.kind for f in manifest.files("feedback")] == ["base"]
    assert old_files <= {retired.path for retired in manifest.retired}
    with analysis.connect(folder) as connection:
        assert connection.execute("SELECT id FROM feedback").fetchall() == [(kept.id,)]


def test_sequence_behind_watermark_gets_full_copy(tmp_path: Path, folder: Path, clock: FakeClock) -> None:
    path = tmp_path / "restored.duckdb"
    store = FeedbackStore.open(path)
    store.insert_many([make_record() for _ in range(5)])
    publisher = open_publisher(folder, clock)
    publisher.publish(connection_of(store))
    store.close()
    path.unlink()
    store = FeedbackStore.open(path)
    store.insert_many([make_record()])

    report = publisher.publish(connection_of(store))
    store.close()
    publisher.close()

    assert "behind the snapshot's watermark" in report.full_copy_reason
    assert read_manifest(folder).watermark == 1


def test_missing_listed_file_gets_full_copy(store: FeedbackStore, folder: Path, clock: FakeClock) -> None:
    publisher = open_publisher(folder, clock)
    store.insert_many([make_record()])
    report = publisher.publish(connection_of(store))
    publisher.close()
    (folder / report.files[0]).unlink()

    reopened = open_publisher(folder, clock)
    repaired = reopened.publish(connection_of(store))
    reopened.close()

    assert "missing" in repaired.full_copy_reason
    assert repaired.rows["feedback"] == 1


def test_second_publisher_on_folder_rejected(publisher: SnapshotPublisher, folder: Path) -> None:
    with pytest.raises(SnapshotError, match="Another process"):
        open_publisher(folder)


def test_invalid_manifest_rejected(folder: Path) -> None:
    folder.mkdir()
    (folder / "manifest.json").write_text("{not json", encoding="utf-8")

    with pytest.raises(SnapshotError, match="is invalid"):
        open_publisher(folder)


def test_failed_copy_leaves_no_file(
    store: FeedbackStore, publisher: SnapshotPublisher, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publisher.publish(connection_of(store))
    before = read_manifest(folder)
    store.insert_many([make_record()])
    real_copy = snapshots._copy_changes

    def copy_then_fail(connection, table, after, latest, temp):
        real_copy(connection, table, after, latest, temp)
        raise duckdb.IOException("disk full")

    monkeypatch.setattr(snapshots, "_copy_changes", copy_then_fail)

    with pytest.raises(SnapshotError, match="disk full"):
        publisher.publish(connection_of(store))

    assert read_manifest(folder) == before
    assert not [name for name in files_on_disk(folder) if name.endswith(TEMP_SUFFIX)]
    store.insert_many([make_record()])


def test_open_deletes_leftover_files(store: FeedbackStore, folder: Path, clock: FakeClock) -> None:
    publisher = open_publisher(folder, clock)
    publisher.publish(connection_of(store))
    publisher.close()
    (folder / "feedback" / ".0123abcd.tmp").write_bytes(b"PAR1 partial")
    (folder / "feedback" / "delta-000000000099.parquet").write_bytes(b"renamed before a crash")
    (folder / ".manifest-0123.tmp").write_text("{", encoding="utf-8")

    reopened = open_publisher(folder, clock)
    reopened.close()

    assert files_on_disk(folder) == {
        "manifest.json",
        ".publisher.lock",
        "feedback/base-000000000001.parquet",
        "outbox/base-000000000002.parquet",
    }


def test_manifest_never_lists_temp_files(store: FeedbackStore, publisher: SnapshotPublisher, folder: Path) -> None:
    for _ in range(5):
        store.insert_many([make_record()])
        publisher.publish(connection_of(store))
        publisher.compact()

    manifest = read_manifest(folder)
    listed = [f.path for table in snapshots.TABLES for f in manifest.files(table)]
    assert all(path.endswith(".parquet") and not Path(path).name.startswith(".") for path in listed)
    assert not [name for name in files_on_disk(folder) if name.endswith(TEMP_SUFFIX)]


# -- compaction -----------------------------------------------------------------------------


def test_compaction_keeps_newest_version(store: FeedbackStore, publisher: SnapshotPublisher, folder: Path) -> None:
    waiting = [make_record(sentiment_label=None, sentiment_score=None, model_version=None) for _ in range(4)]
    store.insert_many(waiting)
    publisher.publish(connection_of(store))
    store.record_enrichment_failure([record.id for record in waiting], error_text="model failed")
    publisher.publish(connection_of(store))
    store.complete_enrichment([(record.with_sentiment(sentiment("positive", 0.8)), []) for record in waiting[:2]], now=START)
    publisher.publish(connection_of(store))

    report = publisher.compact(force=True)

    manifest = read_manifest(folder)
    base = manifest.files("feedback")
    assert report.files == (base[0].path,)
    assert [f.kind for f in base] == ["base"]
    rows = duckdb.execute(
        "SELECT id, sentiment_label, enrichment_attempts FROM read_parquet(?) ORDER BY id", [str(folder / base[0].path)]
    ).fetchall()
    expected = sorted(
        [(record.id, "positive", 2) for record in waiting[:2]] + [(record.id, None, 1) for record in waiting[2:]]
    )
    assert rows == expected


def physical_types(path: Path) -> dict[str, str]:
    """Return column -> Parquet physical type of one file."""
    rows = duckdb.execute("SELECT name, type FROM parquet_schema(?) WHERE type IS NOT NULL", [str(path)]).fetchall()
    return dict(rows)


def encodings(path: Path, column: str) -> set[str]:
    rows = duckdb.execute(
        "SELECT DISTINCT encodings FROM parquet_metadata(?) WHERE path_in_schema = ?", [str(path), column]
    ).fetchall()
    return {row[0] for row in rows}


def test_every_copy_writes_file_types(store: FeedbackStore, publisher: SnapshotPublisher, folder: Path) -> None:
    store.insert_many([make_record()])
    full = publisher.publish(connection_of(store))
    store.insert_many([make_record()])
    delta = publisher.publish(connection_of(store))
    compaction = publisher.compact(force=True)

    written = [full.files[0], delta.files[0], *(path for path in compaction.files if path.startswith("feedback/"))]
    assert len(written) == 3
    for relative in written:
        assert physical_types(folder / relative)["sentiment_score"] == "FLOAT", relative
        # PARQUET_VERSION V2: integers are delta-encoded.
        assert encodings(folder / relative, "change_seq") == {"DELTA_BINARY_PACKED"}, relative


def test_old_style_file_reads_with_new(store: FeedbackStore, publisher: SnapshotPublisher, folder: Path) -> None:
    old = make_record(sentiment_label="negative", sentiment_score=0.123456789)
    store.insert_many([old])
    full = publisher.publish(connection_of(store))
    # Rewrite the base as the publisher did before it narrowed sentiment_score: DOUBLE, Parquet V1.
    connection_of(store).execute(
        "COPY (SELECT * FROM feedback ORDER BY change_seq) TO ? (FORMAT parquet, COMPRESSION zstd)",
        [str(folder / full.files[0])],
    )
    new = make_record(sentiment_label="positive", sentiment_score=0.87)
    store.insert_many([new])
    delta = publisher.publish(connection_of(store))
    assert physical_types(folder / full.files[0])["sentiment_score"] == "DOUBLE"
    assert physical_types(folder / delta.files[0])["sentiment_score"] == "FLOAT"

    with analysis.connect(folder) as connection:
        score_type = connection.execute(
            "SELECT data_type FROM information_schema.columns WHERE table_name = 'feedback' AND column_name = ?",
            ["sentiment_score"],
        ).fetchall()
        mixed = dict(connection.execute("SELECT id, sentiment_score FROM feedback").fetchall())
    publisher.compact(force=True)
    with analysis.connect(folder) as connection:
        compacted = dict(connection.execute("SELECT id, sentiment_score FROM feedback").fetchall())

    assert score_type == [("DOUBLE",)]
    assert mixed == {old.id: 0.123456789, new.id: as_float32(0.87)}
    # Compaction rewrites the old file's score as FLOAT too.
    assert compacted == {old.id: as_float32(0.123456789), new.id: as_float32(0.87)}
    assert abs(compacted[old.id] - 0.123456789) < 3e-8


def test_copies_leave_out_omitted_columns(store: FeedbackStore, publisher: SnapshotPublisher, folder: Path) -> None:
    first = make_record(rating=1)
    store.commit_submissions([(first, None, owed_notifications(first))], now=START, idempotency_window_s=60)
    full = publisher.publish(connection_of(store))
    second = make_record(rating=2)
    store.commit_submissions([(second, None, owed_notifications(second))], now=START, idempotency_window_s=60)
    delta = publisher.publish(connection_of(store))
    compaction = publisher.compact(force=True)
    publisher.request_rewrite("test")
    publisher.publish(connection_of(store))
    assert publisher.wait_for_rewrite(READER_DEADLINE_S), "the snapshot rewrite did not finish in time"
    rewritten = [f.path for table in snapshots.TABLES for f in read_manifest(folder).files(table)]

    written = [*full.files, *delta.files, *compaction.files, *rewritten]
    assert len(written) == 8
    for relative in written:
        table = relative.split("/")[0]
        columns = set(physical_types(folder / relative))
        assert columns.isdisjoint(snapshots.OMITTED_COLUMNS[table]), relative
        assert set(snapshots.ROW_KEYS[table]) <= columns, relative


def view_contents(folder: Path) -> dict[str, object]:
    """Return the columns and rows of the feedback and notifications views."""
    with analysis.connect(folder) as connection:
        return {
            "feedback_columns": connection.table("feedback").columns,
            "notification_columns": connection.table("notifications").columns,
            "feedback_ids": sorted(row[0] for row in connection.execute("SELECT id FROM feedback").fetchall()),
            "notifications": sorted(
                connection.execute("SELECT feedback_id, target, status FROM notifications").fetchall()
            ),
        }


def test_old_layout_files_read_with_new(store: FeedbackStore, publisher: SnapshotPublisher, folder: Path) -> None:
    old = make_record(rating=1)
    store.commit_submissions([(old, None, owed_notifications(old))], now=START, idempotency_window_s=60)
    full = publisher.publish(connection_of(store))
    old_files = {relative.split("/")[0]: folder / relative for relative in full.files}
    # Rewrite both bases as the publisher did before it left out the omitted columns.
    connection_of(store).execute(
        f"COPY (SELECT * FROM feedback) TO ? ({snapshots.PARQUET_OPTIONS})", [str(old_files["feedback"])]
    )
    connection_of(store).execute(
        f"COPY (SELECT * FROM outbox) TO ? ({snapshots.PARQUET_OPTIONS})", [str(old_files["outbox"])]
    )
    # One of the old row's two entries is sent, so the delta contains a newer version of it.
    claimed = store.claim_notifications(now=START, limit=1, lease_s=60)
    store.finish_notifications([DeliveryResult(entry_id=claimed[0].entry.id, outcome="sent")], now=START)
    new = make_record(rating=5)
    store.commit_submissions([(new, None, owed_notifications(new))], now=START, idempotency_window_s=60)
    delta = publisher.publish(connection_of(store))
    delta_files = {relative.split("/")[0]: folder / relative for relative in delta.files}
    assert "request_id" in physical_types(old_files["feedback"])
    assert "id" in physical_types(old_files["outbox"])
    assert "request_id" not in physical_types(delta_files["feedback"])
    assert "id" not in physical_types(delta_files["outbox"])

    mixed = view_contents(folder)
    compaction = publisher.compact(force=True)
    compacted = view_contents(folder)

    sent_target = claimed[0].entry.target
    other_target = ADMIN_TARGET if sent_target == "customer" else "customer"
    assert "request_id" not in mixed["feedback_columns"]
    assert "id" in mixed["feedback_columns"]
    assert "id" not in mixed["notification_columns"]
    assert mixed["feedback_ids"] == sorted([old.id, new.id])
    assert mixed["notifications"] == sorted(
        [(old.id, sent_target, "sent"), (old.id, other_target, "pending"), (new.id, "customer", "pending")]
    )
    assert compacted == mixed
    assert len(compaction.files) == 2
    for relative in compaction.files:
        columns = set(physical_types(folder / relative))
        assert columns.isdisjoint(snapshots.OMITTED_COLUMNS[relative.split("/")[0]]), relative


def test_compaction_waits_for_threshold(store: FeedbackStore, publisher: SnapshotPublisher, folder: Path) -> None:
    publisher.publish(connection_of(store))
    for _ in range(2):
        store.insert_many([make_record()])
        publisher.publish(connection_of(store))

    report = publisher.compact()

    assert report.files == ()
    assert read_manifest(folder).delta_count("feedback") == 2


def test_compaction_bounds_file_count(store: FeedbackStore, folder: Path, clock: FakeClock) -> None:
    publisher = open_publisher(folder, clock, snapshot_compaction_deltas=3, snapshot_grace_s=10)
    max_listed = 0
    for round_number in range(12):
        record = make_record(rating=round_number % 5 + 1)
        store.commit_submissions([(record, None, owed_notifications(record))], now=START, idempotency_window_s=60)
        publisher.publish(connection_of(store))
        publisher.compact()
        clock.advance(4)
        publisher.delete_expired_files()
        manifest = read_manifest(folder)
        max_listed = max(max_listed, *(len(manifest.files(table)) for table in snapshots.TABLES))
    publisher.close()

    assert max_listed <= 3
    parquet_files = [name for name in files_on_disk(folder) if name.endswith(".parquet")]
    # At most 3 listed files per table, plus the 4 that one compaction retired: the 10 s
    # grace period is shorter than the 12 s between two compactions of a table.
    assert len(parquet_files) <= 2 * 3 + 2 * 4
    with analysis.connect(folder) as connection:
        assert connection.execute("SELECT count(*), count(DISTINCT id) FROM feedback").fetchall() == [(12, 12)]


def test_replaced_files_kept_for_grace_period(store: FeedbackStore, folder: Path, clock: FakeClock) -> None:
    publisher = open_publisher(folder, clock, snapshot_compaction_deltas=1, snapshot_grace_s=600)
    publisher.publish(connection_of(store))
    store.insert_many([make_record()])
    publisher.publish(connection_of(store))
    manifest_seen_by_reader = read_manifest(folder)

    report = publisher.compact()
    clock.advance(599)
    deleted_early = publisher.delete_expired_files()
    still_there = all((folder / f.path).exists() for f in manifest_seen_by_reader.files("feedback"))
    clock.advance(1)
    deleted_late = publisher.delete_expired_files()
    publisher.close()

    assert deleted_early == 0
    assert still_there
    assert deleted_late == len(report.retired) == 2
    assert not any((folder / path).exists() for path in report.retired)
    assert read_manifest(folder).retired == ()
    assert (folder / report.files[0]).exists()


def test_compaction_thread_stops_and_restarts(store: FeedbackStore, folder: Path) -> None:
    publisher = open_publisher(folder, snapshot_compaction_deltas=1)
    publisher.start_compaction()
    running = publisher.compaction_running

    publisher.stop_compaction()
    stopped = not publisher.compaction_running
    publisher.start_compaction()
    publisher.close()

    assert running
    assert stopped
    assert not publisher.compaction_running


def test_compact_works_after_thread_stopped(store: FeedbackStore, folder: Path) -> None:
    publisher = open_publisher(folder, snapshot_compaction_deltas=50)
    publisher.start_compaction()
    publisher.stop_compaction()
    publisher.publish(connection_of(store))
    store.insert_many([make_record()])
    publisher.publish(connection_of(store))

    report = publisher.compact(force=True)
    publisher.close()

    assert len(report.files) == 1
    assert len(report.retired) == 2


def test_reader_during_compaction_never_fails(store: FeedbackStore, folder: Path) -> None:
    """A writer thread publishes while the compaction thread merges and the test thread reads."""
    publisher = open_publisher(folder, snapshot_compaction_deltas=2, snapshot_grace_s=600)
    publisher.publish(connection_of(store))
    rounds = 12
    writer_errors: list[BaseException] = []

    def write() -> None:
        try:
            for round_number in range(rounds):
                batch = [make_record(rating=round_number % 5 + 1) for _ in range(5)]
                store.insert_many(batch)
                store.record_enrichment_failure([batch[0].id], error_text="retry later")
                publisher.publish(connection_of(store))
        except BaseException as error:  # reported by the assert below
            writer_errors.append(error)

    writer = threading.Thread(target=write, name="test-writer")
    publisher.start_compaction()
    writer.start()

    def work_left() -> bool:
        return writer.is_alive() or not publisher.manifest.retired or len(counts) < 5

    counts = []
    deadline = time.monotonic() + READER_DEADLINE_S
    with analysis.connect(folder) as connection:
        # Reads go on until the writer is done and the compaction thread has merged at least once.
        while work_left() and len(counts) < 500 and time.monotonic() < deadline:
            # Each refresh reads the newest manifest, as a notebook cell that calls it would.
            analysis.refresh(connection)
            counts.append(connection.execute("SELECT count(*), count(DISTINCT id) FROM feedback").fetchall()[0])
    writer.join(READER_DEADLINE_S)
    publisher.stop_compaction()
    manifest = publisher.manifest
    publisher.close()

    assert not writer_errors
    assert len(counts) >= 5
    assert all(total == distinct for total, distinct in counts)
    assert [total for total, _ in counts] == sorted(total for total, _ in counts)
    assert manifest.retired, "the compaction thread never ran, so the test proved nothing"
    with analysis.connect(folder) as connection:
        assert connection.execute("SELECT count(*) FROM feedback").fetchall() == [(rounds * 5,)]


def test_publish_large_store_then_query(store: FeedbackStore, publisher: SnapshotPublisher, folder: Path) -> None:
    records = fill_store(store, 200, days=3)

    publisher.publish(connection_of(store))

    with analysis.connect(folder) as connection:
        assert connection.execute("SELECT count(*) FROM feedback").fetchall() == [(len(records),)]
        statuses = dict(connection.execute("SELECT status, count(*) FROM notifications GROUP BY status").fetchall())
    assert statuses["sent"] == 27
    assert statuses["dead"] == 3
    assert statuses["pending"] == len(records) + sum(1 for record in records if record.rating <= 2) - 30


# -- background full copy -------------------------------------------------------------------


class HeldCopy:
    """Holds each table copy of a background thread until the test sets `release`.

    Copies on the thread that created it (inline publishes) pass through. With
    `failures_left` above 0, a released background copy writes its file and then fails,
    as a full disk would.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.failures_left = 0
        self.thread_names: set[str] = set()
        self._test_thread = threading.current_thread()
        real_copy = snapshots._copy_changes

        def copy(connection, table, after, latest, temp):
            if threading.current_thread() is self._test_thread:
                return real_copy(connection, table, after, latest, temp)

            self.thread_names.add(threading.current_thread().name)
            self.started.set()
            if not self.release.wait(READER_DEADLINE_S):
                raise duckdb.InterruptException("the test never released the held copy")
            rows = real_copy(connection, table, after, latest, temp)
            if self.failures_left:
                self.failures_left -= 1
                raise duckdb.IOException("disk full")
            return rows

        monkeypatch.setattr(snapshots, "_copy_changes", copy)


@pytest.fixture
def held_copy(monkeypatch: pytest.MonkeyPatch) -> HeldCopy:
    return HeldCopy(monkeypatch)


def open_background_publisher(folder: Path, clock: FakeClock, **settings: object) -> SnapshotPublisher:
    """Open a publisher that runs every full copy in the background, however small the tables."""
    values: dict[str, object] = {"snapshot_dir": str(folder)}
    values.update(settings)
    return SnapshotPublisher.open(SnapshotSettings(**values), clock=clock, inline_full_copy_max_rows=0)


def snapshot_ids(folder: Path) -> list[str]:
    with analysis.connect(folder) as connection:
        return sorted(row[0] for row in connection.execute("SELECT id::VARCHAR FROM feedback").fetchall())


def temp_files(folder: Path) -> list[str]:
    return [name for name in files_on_disk(folder) if name.endswith(TEMP_SUFFIX)]


def test_first_publish_copies_in_background(
    store: FeedbackStore, folder: Path, clock: FakeClock, held_copy: HeldCopy
) -> None:
    records = fill_store(store, 200, days=3)
    publisher = open_background_publisher(folder, clock)
    try:
        report = publisher.publish(connection_of(store))
        assert held_copy.started.wait(READER_DEADLINE_S), "the background copy never started"

        # The copy thread waits inside its copy while the writer commits on its connection.
        late = make_record()
        store.insert_many([late])
        copy_running_after_commit = not publisher.wait_for_rewrite(0)
        with pytest.raises(SnapshotNotFound):
            analysis.connect(folder)
        during = publisher.publish(connection_of(store))
        manifest_during = publisher.manifest

        held_copy.release.set()
        assert publisher.wait_for_rewrite(READER_DEADLINE_S), "the background copy did not finish in time"
        installed = read_manifest(folder)
        after = publisher.publish(connection_of(store))
    finally:
        held_copy.release.set()
        publisher.close()

    assert report.full_copy_reason == "the folder has no snapshot yet"
    assert report.full_copy_running
    assert report.files == ()
    assert copy_running_after_commit
    assert held_copy.thread_names == {"snapshot-full-copy"}
    assert during.full_copy_running
    assert during.files == ()
    assert manifest_during is None
    base = installed.files("feedback")
    assert [f.kind for f in base] == ["base"]
    assert base[0].rows == len(records)
    assert str(late.id) not in parquet_ids(folder, base[0].path)
    assert after.full_copy_reason is None
    assert after.rows["feedback"] == 1
    assert parquet_ids(folder, after.files[0]) == [str(late.id)]
    assert snapshot_ids(folder) == sorted(str(record.id) for record in [*records, late])


def test_changes_during_full_copy_published_once(
    store: FeedbackStore, folder: Path, clock: FakeClock, held_copy: HeldCopy
) -> None:
    waiting = make_record(sentiment_label=None, sentiment_score=None, model_version=None)
    store.insert_many([waiting, make_record()])
    publisher = open_background_publisher(folder, clock)
    try:
        publisher.publish(connection_of(store))
        assert held_copy.started.wait(READER_DEADLINE_S), "the background copy never started"
        added = [make_record() for _ in range(3)]
        store.insert_many(added)
        store.record_enrichment_failure([waiting.id], error_text="model timed out")
        held_copy.release.set()
        assert publisher.wait_for_rewrite(READER_DEADLINE_S), "the background copy did not finish in time"

        delta = publisher.publish(connection_of(store))
        with analysis.connect(folder) as connection:
            counts = connection.execute("SELECT count(*), count(DISTINCT id) FROM feedback").fetchall()
            attempts = connection.execute(
                "SELECT enrichment_attempts, enrichment_error FROM feedback WHERE id = ?", [waiting.id]
            ).fetchall()
    finally:
        held_copy.release.set()
        publisher.close()

    assert delta.rows["feedback"] == 4
    assert counts == [(5, 5)]
    assert attempts == [(1, "model timed out")]


def test_replaced_database_copied_in_background(
    tmp_path: Path, store: FeedbackStore, folder: Path, clock: FakeClock, held_copy: HeldCopy
) -> None:
    old_records = [make_record() for _ in range(3)]
    store.insert_many(old_records)
    inline = open_publisher(folder, clock)
    inline.publish(connection_of(store))
    inline.close()
    before = read_manifest(folder)
    old_files = {f.path for table in snapshots.TABLES for f in before.files(table)}

    other = FeedbackStore.open(tmp_path / "other.duckdb")
    publisher = open_background_publisher(folder, clock, snapshot_grace_s=600)
    try:
        kept = make_record()
        other.insert_many([kept])
        report = publisher.publish(connection_of(other))
        assert held_copy.started.wait(READER_DEADLINE_S), "the background copy never started"
        late = make_record()
        other.insert_many([late])
        during = publisher.publish(connection_of(other))
        ids_during = snapshot_ids(folder)
        compaction_during = publisher.compact()

        held_copy.release.set()
        assert publisher.wait_for_rewrite(READER_DEADLINE_S), "the background copy did not finish in time"
        installed = read_manifest(folder)
        ids_installed = snapshot_ids(folder)
        after = publisher.publish(connection_of(other))
        ids_after = snapshot_ids(folder)
    finally:
        held_copy.release.set()
        publisher.close()
        other.close()

    assert "the database changed" in report.full_copy_reason
    assert report.full_copy_running
    assert report.watermark == before.watermark
    assert during.files == ()
    assert ids_during == sorted(str(record.id) for record in old_records)
    assert compaction_during.files == ()
    assert installed.database != before.database
    assert installed.watermark == 1
    assert ids_installed == [str(kept.id)]
    assert old_files <= {retired.path for retired in installed.retired}
    assert all((folder / path).exists() for path in old_files)
    assert after.rows["feedback"] == 1
    assert ids_after == sorted([str(kept.id), str(late.id)])


def test_failed_background_copy_retried(
    store: FeedbackStore, folder: Path, clock: FakeClock, held_copy: HeldCopy
) -> None:
    store.insert_many([make_record() for _ in range(3)])
    held_copy.failures_left = 1
    held_copy.release.set()
    publisher = open_background_publisher(folder, clock)
    try:
        failed = publisher.publish(connection_of(store))
        assert publisher.wait_for_rewrite(READER_DEADLINE_S), "the background copy did not finish in time"
        error = publisher.rewrite_error
        leftovers = temp_files(folder)
        manifest_written = (folder / "manifest.json").exists()
        marker_kept = (folder / FULL_COPY_MARKER_NAME).exists()
        pending_after_failure = publisher.rewrite_pending

        retry = publisher.publish(connection_of(store))
        assert publisher.wait_for_rewrite(READER_DEADLINE_S), "the repeated copy did not finish in time"
        error_after_retry = publisher.rewrite_error
        pending_after_retry = publisher.rewrite_pending
    finally:
        publisher.close()

    assert failed.full_copy_running
    assert "disk full" in error
    assert leftovers == []
    assert not manifest_written
    assert marker_kept
    assert pending_after_failure
    assert retry.full_copy_running
    assert retry.full_copy_reason == "the folder has no snapshot yet"
    assert error_after_retry is None
    assert not pending_after_retry
    assert read_manifest(folder).files("feedback")[0].rows == 3
    assert not (folder / FULL_COPY_MARKER_NAME).exists()
    assert temp_files(folder) == []


def test_full_copy_repeated_after_restart(tmp_path: Path, folder: Path, clock: FakeClock, held_copy: HeldCopy) -> None:
    path = tmp_path / "restored.duckdb"
    store = FeedbackStore.open(path)
    store.insert_many([make_record() for _ in range(5)])
    inline = open_publisher(folder, clock)
    inline.publish(connection_of(store))
    inline.close()
    store.close()
    path.unlink()
    store = FeedbackStore.open(path)
    restored = [make_record()]
    store.insert_many(restored)

    held_copy.failures_left = 1
    held_copy.release.set()
    stopped = open_background_publisher(folder, clock)
    failed = stopped.publish(connection_of(store))
    assert stopped.wait_for_rewrite(READER_DEADLINE_S), "the background copy did not finish in time"
    stopped.close()
    marker_after_stop = (folder / FULL_COPY_MARKER_NAME).exists()
    # The database passes the old watermark of 5, so only the marker shows that a full copy is due.
    later = [make_record() for _ in range(6)]
    store.insert_many(later)

    restarted = open_background_publisher(folder, clock)
    try:
        repeated = restarted.publish(connection_of(store))
        assert restarted.wait_for_rewrite(READER_DEADLINE_S), "the repeated copy did not finish in time"
        ids = snapshot_ids(folder)
    finally:
        restarted.close()
        store.close()

    assert "behind the snapshot's watermark" in failed.full_copy_reason
    assert marker_after_stop
    assert repeated.full_copy_reason == "a full copy started before the last stop had not finished"
    assert ids == sorted(str(record.id) for record in [*restored, *later])
    assert not (folder / FULL_COPY_MARKER_NAME).exists()


def test_full_copy_inline_up_to_row_limit(store: FeedbackStore, tmp_path: Path, clock: FakeClock) -> None:
    store.insert_many([make_record() for _ in range(4)])

    at_limit = SnapshotPublisher.open(
        SnapshotSettings(snapshot_dir=str(tmp_path / "at-limit")), clock=clock, inline_full_copy_max_rows=4
    )
    inline = at_limit.publish(connection_of(store))
    at_limit.close()
    above_limit = SnapshotPublisher.open(
        SnapshotSettings(snapshot_dir=str(tmp_path / "above-limit")), clock=clock, inline_full_copy_max_rows=3
    )
    background = above_limit.publish(connection_of(store))
    finished = above_limit.wait_for_rewrite(READER_DEADLINE_S)
    above_limit.close()

    assert not inline.full_copy_running
    assert inline.rows == {"feedback": 4, "outbox": 0}
    assert len(inline.files) == 2
    assert background.full_copy_running
    assert background.files == ()
    assert finished
    assert read_manifest(tmp_path / "above-limit").files("feedback")[0].rows == 4


def test_close_waits_for_background_copy(
    store: FeedbackStore, folder: Path, clock: FakeClock, held_copy: HeldCopy
) -> None:
    store.insert_many([make_record()])
    publisher = open_background_publisher(folder, clock)
    publisher.publish(connection_of(store))
    assert held_copy.started.wait(READER_DEADLINE_S), "the background copy never started"

    held_copy.release.set()
    publisher.close()

    assert read_manifest(folder).files("feedback")[0].rows == 1
    assert temp_files(folder) == []


def test_full_copy_serves_earlier_rewrite_request(
    store: FeedbackStore, folder: Path, clock: FakeClock, held_copy: HeldCopy
) -> None:
    store.insert_many([make_record()])
    publisher = open_background_publisher(folder, clock)
    try:
        publisher.request_rewrite("erasure before the first snapshot")
        publisher.publish(connection_of(store))
        held_copy.release.set()
        assert publisher.wait_for_rewrite(READER_DEADLINE_S), "the background copy did not finish in time"
        pending = publisher.rewrite_pending
        second = publisher.publish(connection_of(store))
        rewrite_started = not publisher.wait_for_rewrite(0)
    finally:
        publisher.close()

    assert not pending
    assert not (folder / snapshots.REWRITE_MARKER_NAME).exists()
    assert second.full_copy_reason is None
    assert not rewrite_started


def test_rewrite_requested_during_full_copy_runs_after(
    store: FeedbackStore, folder: Path, clock: FakeClock, held_copy: HeldCopy
) -> None:
    erased = make_record()
    store.insert_many([erased, make_record()])
    publisher = open_background_publisher(folder, clock)
    try:
        publisher.publish(connection_of(store))
        assert held_copy.started.wait(READER_DEADLINE_S), "the background copy never started"
        store._connection.execute("DELETE FROM feedback WHERE id = ?", [erased.id])
        publisher.request_rewrite("erasure during the full copy")
        held_copy.release.set()
        assert publisher.wait_for_rewrite(READER_DEADLINE_S), "the background copy did not finish in time"
        pending_after_copy = publisher.rewrite_pending
        ids_after_copy = snapshot_ids(folder)

        publisher.publish(connection_of(store))
        assert publisher.wait_for_rewrite(READER_DEADLINE_S), "the rewrite did not finish in time"
        pending_after_rewrite = publisher.rewrite_pending
        ids_after_rewrite = snapshot_ids(folder)
    finally:
        held_copy.release.set()
        publisher.close()

    assert pending_after_copy
    assert str(erased.id) in ids_after_copy
    assert not pending_after_rewrite
    assert str(erased.id) not in ids_after_rewrite
    assert held_copy.thread_names == {"snapshot-full-copy", "snapshot-rewrite"}
