"""`feedbackbot export` and `feedbackbot query` on a snapshot published from a real FeedbackStore."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pytest

from feedbackbot import cli
from feedbackbot.snapshot_settings import SnapshotSettings
from feedbackbot.snapshots import SnapshotPublisher
from feedbackbot.store import FeedbackStore
from models.feedback import FeedbackRecord
from tests.unit.snapshot_data import START, fill_store

SINCE = "2026-11-26"


@dataclass(frozen=True)
class PublishedSnapshot:
    folder: Path
    records: list[FeedbackRecord]

    def count_since(self, text: str) -> int:
        since = datetime.fromisoformat(text).replace(tzinfo=timezone.utc)
        return sum(1 for record in self.records if record.received_at >= since)


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> PublishedSnapshot:
    """A snapshot of 100 synthetic rows over 5 days, shared by the tests of this module."""
    root = tmp_path_factory.mktemp("cli-snapshots")
    store = FeedbackStore.open(root / "feedback.duckdb")
    publisher = SnapshotPublisher.open(SnapshotSettings(snapshot_dir=str(root / "snapshots")))
    records = fill_store(store, 100, days=5)
    publisher.publish(store._connection)
    publisher.close()
    store.close()
    return PublishedSnapshot(root / "snapshots", records)


@pytest.fixture
def snapshot_env(monkeypatch: pytest.MonkeyPatch, published: PublishedSnapshot, tmp_path: Path) -> PublishedSnapshot:
    monkeypatch.setenv("FEEDBACKBOT_SNAPSHOT_DIR", str(published.folder))
    monkeypatch.chdir(tmp_path)
    return published


def read_parquet_count(path: Path) -> int:
    return duckdb.execute("SELECT count(*) FROM read_parquet(?)", [str(path)]).fetchall()[0][0]


# -- query ----------------------------------------------------------------------------------


def test_query_prints_table(snapshot_env: PublishedSnapshot, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["query", "SELECT rating, count(*) AS submissions FROM feedback GROUP BY rating ORDER BY rating"])

    out, err = capsys.readouterr()
    data_lines = [line for line in out.splitlines() if line.startswith("│")][2:]
    assert code == cli.EXIT_OK
    assert "submissions" in out
    assert [line.split("│")[1].strip() for line in data_lines] == ["1", "2", "3", "4", "5"]
    assert "Snapshot data as of" in err


def test_query_csv_has_header_and_rows(snapshot_env: PublishedSnapshot, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["query", "SELECT id, received_at, rating FROM feedback ORDER BY received_at", "--format", "csv"])

    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert code == cli.EXIT_OK
    assert rows[0] == ["id", "received_at", "rating"]
    assert len(rows) == len(snapshot_env.records) + 1
    assert datetime.fromisoformat(rows[1][1]).tzinfo is not None


def test_query_json_is_array_of_objects(snapshot_env: PublishedSnapshot, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["query", "SELECT id, sentiment_label FROM feedback", "--format", "json"])

    records = json.loads(capsys.readouterr().out)
    assert code == cli.EXIT_OK
    assert len(records) == len(snapshot_env.records)
    assert {record["id"] for record in records} == {str(record.id) for record in snapshot_env.records}
    assert None in {record["sentiment_label"] for record in records}


def test_query_empty_result_json(snapshot_env: PublishedSnapshot, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["query", "SELECT id FROM feedback WHERE rating > 5", "--format", "json"])

    assert code == cli.EXIT_OK
    assert json.loads(capsys.readouterr().out) == []


def test_query_invalid_sql_is_usage_error(snapshot_env: PublishedSnapshot, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["query", "SELECT nope FROM feedback"])

    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE
    assert "Invalid query" in err
    assert "nope" in err


def test_query_without_snapshot_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["query", "SELECT 1", "--snapshot-dir", str(tmp_path / "nothing")])

    err = capsys.readouterr().err
    assert code == cli.EXIT_NO_DATA
    assert str(tmp_path / "nothing") in err


# -- export ---------------------------------------------------------------------------------


def test_export_parquet_since_date(snapshot_env: PublishedSnapshot, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "out.parquet"

    code = cli.main(["export", "--format", "parquet", "--since", SINCE, "--output", str(output)])

    expected = snapshot_env.count_since(SINCE)
    err = capsys.readouterr().err
    assert code == cli.EXIT_OK
    assert 0 < expected < len(snapshot_env.records)
    assert read_parquet_count(output) == expected
    assert f"Exporting {expected} rows of feedback" in err
    assert f"Exported {expected} rows to {output}" in err


def test_export_csv_default_name(snapshot_env: PublishedSnapshot, tmp_path: Path) -> None:
    code = cli.main(["export", "--format", "csv", "--since", SINCE])

    output = tmp_path / f"feedback-since-{SINCE}.csv"
    with output.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert code == cli.EXIT_OK
    assert len(rows) == snapshot_env.count_since(SINCE)
    assert {"id", "received_at", "sentiment_label", "change_seq"} <= set(rows[0])
    assert [row["received_at"] for row in rows] == sorted(row["received_at"] for row in rows)


def test_export_notifications_table(snapshot_env: PublishedSnapshot, tmp_path: Path) -> None:
    output = tmp_path / "notifications.parquet"

    code = cli.main(
        ["export", "--format", "parquet", "--since", START.date().isoformat(), "--table", "notifications", "--output", str(output)]
    )

    alerts = sum(1 for record in snapshot_env.records if record.rating <= 2)
    assert code == cli.EXIT_OK
    assert read_parquet_count(output) == len(snapshot_env.records) + alerts


def test_export_nothing_since_writes_empty_file(snapshot_env: PublishedSnapshot, tmp_path: Path) -> None:
    output = tmp_path / "empty.parquet"

    code = cli.main(["export", "--format", "parquet", "--since", "2030-01-01", "--output", str(output)])

    assert code == cli.EXIT_OK
    assert read_parquet_count(output) == 0


def test_export_bad_date_is_usage_error(snapshot_env: PublishedSnapshot, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["export", "--format", "csv", "--since", "2026-02-30"])

    assert code == cli.EXIT_USAGE
    assert "invalid date '2026-02-30'" in capsys.readouterr().err


def test_export_missing_folder_is_usage_error(
    snapshot_env: PublishedSnapshot, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "no" / "such" / "out.csv"

    code = cli.main(["export", "--format", "csv", "--since", SINCE, "--output", str(output)])

    assert code == cli.EXIT_USAGE
    assert "does not exist" in capsys.readouterr().err
    assert not output.exists()


def test_export_without_snapshot_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "out.csv"

    code = cli.main(
        ["export", "--format", "csv", "--since", SINCE, "--output", str(output), "--snapshot-dir", str(tmp_path / "none")]
    )

    assert code == cli.EXIT_NO_DATA
    assert "No snapshot found" in capsys.readouterr().err
    assert not output.exists()


def test_progress_lines_every_ten_percent() -> None:
    stream = io.StringIO()
    show = cli._progress_printer(stream)

    for percent in (3.0, 12.5, 15.0, 47.0, 48.0, 100.0):
        show(percent)

    assert stream.getvalue().splitlines() == ["  12% exported", "  47% exported", "  100% exported"]
