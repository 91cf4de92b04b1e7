"""feedbackbot.analysis on a snapshot published from a real FeedbackStore."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pytest

from feedbackbot import analysis
from feedbackbot.errors import SnapshotError, SnapshotNotFound, SnapshotQueryError
from feedbackbot.snapshot_settings import SnapshotSettings
from feedbackbot.snapshots import SnapshotPublisher
from feedbackbot.store import FeedbackStore
from models.feedback import FeedbackRecord
from tests.unit.snapshot_data import START, fill_store, make_record


@dataclass(frozen=True)
class PublishedSnapshot:
    folder: Path
    records: list[FeedbackRecord]


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> PublishedSnapshot:
    """A snapshot of 120 synthetic rows over 4 days, shared by the read-only tests."""
    root = tmp_path_factory.mktemp("analysis")
    store = FeedbackStore.open(root / "feedback.duckdb")
    publisher = SnapshotPublisher.open(SnapshotSettings(snapshot_dir=str(root / "snapshots")))
    records = fill_store(store, 120, days=4)
    publisher.publish(store._connection)
    publisher.close()
    store.close()
    return PublishedSnapshot(root / "snapshots", records)


def test_resolve_prefers_argument(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(analysis.SNAPSHOT_DIR_ENV, str(tmp_path / "from-env"))

    assert analysis.resolve_snapshot_dir(tmp_path / "given") == tmp_path / "given"


def test_resolve_uses_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(analysis.SNAPSHOT_DIR_ENV, str(tmp_path / "from-env"))

    assert analysis.resolve_snapshot_dir() == tmp_path / "from-env"


def test_resolve_defaults_under_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(analysis.SNAPSHOT_DIR_ENV, raising=False)
    monkeypatch.setenv("FEEDBACKBOT_HOME", str(tmp_path))

    assert analysis.resolve_snapshot_dir() == tmp_path / "data" / "snapshots"


def test_resolve_defaults_under_cwd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(analysis.SNAPSHOT_DIR_ENV, raising=False)
    monkeypatch.delenv("FEEDBACKBOT_HOME", raising=False)
    monkeypatch.chdir(tmp_path)

    assert analysis.resolve_snapshot_dir() == tmp_path / "data" / "snapshots"


def test_connect_without_snapshot_names_folder(tmp_path: Path) -> None:
    with pytest.raises(SnapshotNotFound) as raised:
        analysis.connect(tmp_path / "empty")

    message = str(raised.value)
    assert str(tmp_path / "empty") in message
    assert analysis.SNAPSHOT_DIR_ENV in message


def test_connect_reads_environment_folder(monkeypatch: pytest.MonkeyPatch, published: PublishedSnapshot) -> None:
    monkeypatch.setenv(analysis.SNAPSHOT_DIR_ENV, str(published.folder))

    with analysis.connect() as connection:
        count = connection.execute("SELECT count(*) FROM feedback").fetchall()[0][0]

    assert count == len(published.records)


def test_feedback_view_keeps_rows_without_sentiment(published: PublishedSnapshot) -> None:
    waiting = sum(1 for record in published.records if record.sentiment_label is None)

    with analysis.connect(published.folder) as connection:
        rows = connection.execute(
            "SELECT count(*), count(*) FILTER (WHERE enrichment_attempts = 1 AND enrichment_error IS NOT NULL) "
            "FROM feedback WHERE sentiment_label IS NULL"
        ).fetchall()

    assert waiting > 0
    assert rows == [(waiting, waiting)]


def test_feedback_view_matches_store_values(published: PublishedSnapshot) -> None:
    first = published.records[0]

    with analysis.connect(published.folder) as connection:
        row = connection.execute(
            "SELECT received_at, customer_email, rating, sentiment_label FROM feedback WHERE id = ?", [first.id]
        ).fetchall()[0]

    assert row == (first.received_at, first.customer_email, first.rating, first.sentiment_label)


def test_notifications_view_has_every_entry(published: PublishedSnapshot) -> None:
    alerts = sum(1 for record in published.records if record.rating <= 2)

    with analysis.connect(published.folder) as connection:
        kinds = dict(connection.execute("SELECT kind, count(*) FROM notifications GROUP BY kind").fetchall())

    assert kinds == {"confirmation": len(published.records), "admin_alert": alerts}


def test_views_leave_out_omitted_columns(published: PublishedSnapshot) -> None:
    with analysis.connect(published.folder) as connection:
        feedback_columns = connection.table("feedback").columns
        notification_columns = connection.table("notifications").columns

    assert "id" in feedback_columns
    assert "request_id" not in feedback_columns
    assert "id" not in notification_columns
    assert {"feedback_id", "target", "created_at"} <= set(notification_columns)


def test_export_notifications_orders_by_key(published: PublishedSnapshot, tmp_path: Path) -> None:
    output = tmp_path / "notifications.parquet"

    with analysis.connect(published.folder) as connection:
        rows = analysis.export(
            connection, view="notifications", since=START, output=output, file_format="parquet"
        )
    exported = duckdb.execute("SELECT created_at, feedback_id, target FROM read_parquet(?)", [str(output)]).fetchall()

    assert rows == len(exported)
    assert len(set(exported)) == len(exported)
    assert exported == sorted(exported)


def test_feedback_daily_counts_by_utc_day(published: PublishedSnapshot) -> None:
    expected = Counter(record.received_at.astimezone(timezone.utc).date() for record in published.records)
    waiting = sum(1 for record in published.records if record.sentiment_label is None)

    with analysis.connect(published.folder) as connection:
        rows = connection.execute(
            "SELECT day, feedback, positive + neutral + negative + without_sentiment, without_sentiment FROM feedback_daily"
        ).fetchall()

    assert {day: count for day, count, _, _ in rows} == dict(expected)
    assert all(count == labelled for _, count, labelled, _ in rows)
    assert sum(row[3] for row in rows) == waiting


def test_expected_sentiment_maps_ratings(published: PublishedSnapshot) -> None:
    with analysis.connect(published.folder) as connection:
        rows = connection.execute("SELECT r, expected_sentiment(r) FROM range(1, 6) AS ratings(r)").fetchall()

    assert rows == [(1, "negative"), (2, "negative"), (3, "neutral"), (4, "positive"), (5, "positive")]


def test_snapshot_info_describes_manifest(published: PublishedSnapshot) -> None:
    with analysis.connect(published.folder) as connection:
        folder, watermark, checked_at = connection.execute(
            "SELECT snapshot_dir, watermark, checked_at FROM snapshot_info"
        ).fetchall()[0]

    assert folder == str(published.folder)
    assert watermark > len(published.records)
    assert datetime.now(timezone.utc) - checked_at < timedelta(minutes=10)


def test_refresh_shows_later_publish(tmp_path: Path) -> None:
    store = FeedbackStore.open(tmp_path / "feedback.duckdb")
    publisher = SnapshotPublisher.open(SnapshotSettings(snapshot_dir=str(tmp_path / "snapshots")))
    store.insert_many([make_record()])
    publisher.publish(store._connection)
    connection = analysis.connect(tmp_path / "snapshots")
    before = connection.execute("SELECT count(*) FROM feedback").fetchall()[0][0]
    store.insert_many([make_record(), make_record()])
    publisher.publish(store._connection)

    analysis.refresh(connection)

    after = connection.execute("SELECT count(*) FROM feedback").fetchall()[0][0]
    connection.close()
    publisher.close()
    store.close()
    assert (before, after) == (1, 3)


def test_refresh_rejects_foreign_connection() -> None:
    with duckdb.connect() as connection, pytest.raises(SnapshotError, match="analysis.connect"):
        analysis.refresh(connection)


@pytest.mark.parametrize(
    "sql",
    [
        "SELEC 1",
        "SELECT no_such_column FROM feedback",
        "SELECT * FROM no_such_view",
        "SELECT CAST(customer_email AS INTEGER) FROM feedback",
    ],
)
def test_run_query_rejects_invalid_sql(published: PublishedSnapshot, sql: str) -> None:
    with analysis.connect(published.folder) as connection:
        with pytest.raises(SnapshotQueryError, match="Invalid query"):
            analysis.run_query(connection, sql)


def test_run_query_returns_rows(published: PublishedSnapshot) -> None:
    with analysis.connect(published.folder) as connection:
        result = analysis.run_query(connection, "SELECT rating, count(*) AS n FROM feedback GROUP BY rating ORDER BY rating")
        columns = result.columns
        rows = result.fetchall()

    assert columns == ["rating", "n"]
    assert [rating for rating, _ in rows] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-01", datetime(2026, 12, 1, tzinfo=timezone.utc)),
        ("2026-12-01T08:30:00", datetime(2026, 12, 1, 8, 30, tzinfo=timezone.utc)),
        ("2026-12-01T08:30:00+01:00", datetime(2026, 12, 1, 7, 30, tzinfo=timezone.utc)),
        ("2026-12-01T08:30:00Z", datetime(2026, 12, 1, 8, 30, tzinfo=timezone.utc)),
    ],
)
def test_parse_since_accepts_iso_forms(text: str, expected: datetime) -> None:
    assert analysis.parse_since(text) == expected


@pytest.mark.parametrize("text", ["yesterday", "2026-13-01", "01/12/2026", ""])
def test_parse_since_rejects_other_forms(text: str) -> None:
    with pytest.raises(ValueError, match="expected YYYY-MM-DD"):
        analysis.parse_since(text)
