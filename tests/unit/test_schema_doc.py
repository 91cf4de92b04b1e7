"""docs/schema.md lists every column of the snapshot views, with the type that readers see."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from feedbackbot import analysis
from feedbackbot.snapshot_settings import SnapshotSettings
from feedbackbot.snapshots import OMITTED_COLUMNS, SnapshotPublisher
from feedbackbot.store import FeedbackStore

SCHEMA_DOC = Path(__file__).resolve().parents[2] / "docs" / "schema.md"
# View in the doc -> the store's table behind it.
DOCUMENTED_TABLES = {"feedback": "feedback", "notifications": "outbox"}
TYPE_ALIASES = {"TIMESTAMPTZ": "TIMESTAMP WITH TIME ZONE"}
COLUMN_ROW = re.compile(r"^\| `(?P<name>[a-z_]+)` \| (?P<type>[A-Z ]+) \|")


def documented_columns(view: str) -> dict[str, str]:
    """Return column -> type from the table under the `## <view>` heading of docs/schema.md."""
    text = SCHEMA_DOC.read_text(encoding="utf-8")
    section = text.split(f"\n## {view}\n", 1)[1].split("\n## ", 1)[0]
    columns = {}
    for line in section.splitlines():
        match = COLUMN_ROW.match(line)
        if match:
            declared = match["type"].strip()
            columns[match["name"]] = TYPE_ALIASES.get(declared, declared)
    return columns


@pytest.fixture(scope="module")
def columns(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, dict[str, str]]]:
    """Column -> type of each store table and of each snapshot view, from a fresh FeedbackStore file."""
    root = tmp_path_factory.mktemp("schema")
    store = FeedbackStore.open(root / "feedback.duckdb")
    publisher = SnapshotPublisher.open(SnapshotSettings(snapshot_dir=str(root / "snapshots")))
    publisher.publish(store._connection)
    store_columns = {
        table: {name: kind for name, kind, *_ in store._connection.execute(f"DESCRIBE {table}").fetchall()}
        for table in DOCUMENTED_TABLES.values()
    }
    publisher.close()
    store.close()

    with analysis.connect(root / "snapshots") as connection:
        view_columns = {
            view: {name: kind for name, kind, *_ in connection.execute(f"DESCRIBE {view}").fetchall()}
            for view in DOCUMENTED_TABLES
        }
    return {"store": store_columns, "views": view_columns}


def snapshot_columns(columns: dict, view: str) -> set[str]:
    """Return the store table's columns that the snapshot files keep."""
    table = DOCUMENTED_TABLES[view]
    return set(columns["store"][table]) - set(OMITTED_COLUMNS[table])


@pytest.mark.parametrize("view", list(DOCUMENTED_TABLES))
def test_every_store_column_documented(columns: dict, view: str) -> None:
    missing = snapshot_columns(columns, view) - set(documented_columns(view))

    assert not missing, f"docs/schema.md lacks these {view} columns: {sorted(missing)}"


@pytest.mark.parametrize("view", list(DOCUMENTED_TABLES))
def test_no_stale_column_documented(columns: dict, view: str) -> None:
    stale = set(documented_columns(view)) - snapshot_columns(columns, view)

    assert not stale, f"docs/schema.md lists {view} columns that the snapshots lack: {sorted(stale)}"


@pytest.mark.parametrize("view", list(DOCUMENTED_TABLES))
def test_documented_types_match_views(columns: dict, view: str) -> None:
    documented = documented_columns(view)

    assert columns["views"][view] == documented


@pytest.mark.parametrize("view", list(DOCUMENTED_TABLES))
def test_omitted_columns_explained(view: str) -> None:
    section = SCHEMA_DOC.read_text(encoding="utf-8").split("\n## What is not in the snapshots\n", 1)[1]

    for column in OMITTED_COLUMNS[DOCUMENTED_TABLES[view]]:
        assert f"`{DOCUMENTED_TABLES[view]}.{column}`" in section, column
