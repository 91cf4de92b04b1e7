"""Read the feedback data from a notebook or a script, through the Parquet snapshots.

The service's DuckDB file cannot be opened while the service runs, because DuckDB lets one
process hold a file for writing. The persistence deployment therefore publishes snapshots
as Parquet files every few seconds (`snapshot_max_age_s`, 10 s by default), and this module
reads them:

    from feedbackbot import analysis

    con = analysis.connect()                  # or analysis.connect("/path/to/snapshots")
    con.sql("SELECT rating, count(*) FROM feedback GROUP BY rating ORDER BY rating").df()
    analysis.refresh(con)                     # pick up what was published since

`connect` returns an ordinary in-memory DuckDB connection; `.df()` needs pandas
(`pip install -e '.[notebooks]'`). It finds the snapshot folder in this order: the argument,
$FEEDBACKBOT_SNAPSHOT_DIR, then data/snapshots under $FEEDBACKBOT_HOME or the current
directory. The connection has these views and macros:

- `feedback`: the newest version of each feedback row. `sentiment_label`, `sentiment_score`
  and `model_version` are NULL while a row waits for late scoring.
- `notifications`: the newest version of each outbox entry (confirmations and admin
  alerts with their delivery status).
- `feedback_daily`: per UTC day, the count, the mean rating and the count of each
  sentiment label, with `without_sentiment` for rows not scored yet.
- `snapshot_info`: one row with the folder, the manifest's generation and watermark,
  `checked_at` (when persistence last compared the database with the snapshot, so the data
  is complete up to then) and `loaded_at` (when this connection read the manifest).
- `expected_sentiment(rating)`: a macro that maps ratings 1-2 to 'negative', 3 to
  'neutral' and 4-5 to 'positive', for comparing the model with the customers' ratings.

docs/schema.md describes every column. Timestamps are TIMESTAMPTZ, shown in UTC. Views whose
names start with an underscore are internal parts of `feedback` and `notifications`. The
snapshot files leave out the database's `feedback.request_id` and `outbox.id` to save
space (`feedbackbot.snapshots.OMITTED_COLUMNS`), so the views lack them too.

A connection keeps the file list of the manifest it read. Files that compaction replaces
stay on disk for `snapshot_grace_s` (1 hour by default). After that, a connection that was
not refreshed can fail with a DuckDB IO error about a missing Parquet file. Call
`refresh(con)` or `connect()` again to fix it.

The snapshots contain customer names, email addresses and texts, so treat query results and
exports like the database itself.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import duckdb

from feedbackbot.errors import SnapshotError, SnapshotQueryError
from feedbackbot.settings import resolve_path
from feedbackbot.snapshot_manifest import Manifest, read_manifest
from feedbackbot.snapshot_settings import DEFAULT_SNAPSHOT_DIR
from feedbackbot.snapshots import ROW_KEYS, newest_version_filter, view_columns

logger = logging.getLogger(__name__)

SNAPSHOT_DIR_ENV = "FEEDBACKBOT_SNAPSHOT_DIR"

# View name -> the store's table it shows.
VIEWS = {"feedback": "feedback", "notifications": "outbox"}

# View name -> the time column that `export --since` filters on.
EXPORT_TIME_COLUMNS = {"feedback": "received_at", "notifications": "created_at"}

ExportFormat = Literal["parquet", "csv"]

# DuckDB errors that mean the query itself is wrong, not the snapshot or the machine.
_QUERY_ERRORS = (duckdb.ProgrammingError, duckdb.DataError, duckdb.IntegrityError, duckdb.NotSupportedError)

_DERIVED_OBJECTS = (
    """
    CREATE OR REPLACE MACRO expected_sentiment(rating) AS
        CASE WHEN rating <= 2 THEN 'negative' WHEN rating = 3 THEN 'neutral' ELSE 'positive' END
    """,
    """
    CREATE OR REPLACE VIEW feedback_daily AS
    SELECT
        CAST(timezone('UTC', received_at) AS DATE) AS day,
        count(*) AS feedback,
        avg(rating) AS mean_rating,
        count(*) FILTER (WHERE sentiment_label = 'positive') AS positive,
        count(*) FILTER (WHERE sentiment_label = 'neutral') AS neutral,
        count(*) FILTER (WHERE sentiment_label = 'negative') AS negative,
        count(*) FILTER (WHERE sentiment_label IS NULL) AS without_sentiment
    FROM feedback
    GROUP BY day
    ORDER BY day
    """,
)


def resolve_snapshot_dir(
    snapshot_dir: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Path:
    """Return the snapshot folder: `snapshot_dir`, else $FEEDBACKBOT_SNAPSHOT_DIR, else data/snapshots.

    data/snapshots is resolved against $FEEDBACKBOT_HOME, else the current directory.
    """
    environ = os.environ if environ is None else environ
    if snapshot_dir is not None and str(snapshot_dir).strip():
        return Path(snapshot_dir).expanduser().absolute()

    from_environment = environ.get(SNAPSHOT_DIR_ENV, "").strip()
    if from_environment:
        return Path(from_environment).expanduser().absolute()
    return resolve_path(DEFAULT_SNAPSHOT_DIR).absolute()


def connect(snapshot_dir: str | os.PathLike[str] | None = None) -> duckdb.DuckDBPyConnection:
    """Open an in-memory DuckDB connection with views over the newest snapshot.

    Raises SnapshotNotFound, naming the folder, when nothing has been published there yet,
    and SnapshotError when the snapshot cannot be read.
    """
    folder = resolve_snapshot_dir(snapshot_dir)
    manifest = read_manifest(folder)

    connection = duckdb.connect(":memory:")
    try:
        connection.execute("SET TimeZone = 'UTC'")
        _define_views(connection, folder, manifest)
    except duckdb.Error as error:
        connection.close()
        raise SnapshotError(
            f"Failed to read the snapshot in {folder}: {error}. If a file is missing, the folder "
            "was changed by hand; stop persistence, delete the folder and start it again."
        ) from error
    except SnapshotError:
        connection.close()
        raise

    logger.info("Opened the snapshot in %s at watermark %d", folder, manifest.watermark)
    return connection


def refresh(connection: duckdb.DuckDBPyConnection) -> None:
    """Point the views of a connection from `connect` at the newest snapshot of its folder."""
    try:
        rows = connection.execute("SELECT snapshot_dir FROM snapshot_info").fetchall()
    except duckdb.Error as error:
        raise SnapshotError(
            f"This connection has no snapshot_info table ({error}); open it with feedbackbot.analysis.connect()."
        ) from error

    folder = Path(rows[0][0])
    manifest = read_manifest(folder)
    try:
        _define_views(connection, folder, manifest)
    except duckdb.Error as error:
        raise SnapshotError(f"Failed to read the snapshot in {folder}: {error}. Call connect() again.") from error


def _define_newest_rows(
    connection: duckdb.DuckDBPyConnection, view: str, table: str, bases: list[Path], deltas: list[Path]
) -> None:
    """Create `view` with the newest version of each row of `table`'s snapshot files.

    A base file (a full copy or a compaction) has each row key (ROW_KEYS) once, so only the
    rows whose key also appears in a delta need the window that picks the newest version.
    The base's other rows pass straight through, which saves sorting millions of rows for a
    few thousand changes.
    """
    newest = newest_version_filter(table)

    # The relation API embeds and quotes the paths itself: CREATE VIEW cannot take prepared
    # parameters. The helper views are named after the view, with a leading underscore.
    if len(bases) == 1 and not deltas:
        # Right after a full copy or a compaction: every row is the newest version.
        _read_files(connection, table, bases).create_view(view, replace=True)
        return
    if len(bases) != 1:
        versions = _read_files(connection, table, bases + deltas)
        versions.query("versions", f"SELECT * FROM versions {newest}").create_view(view, replace=True)
        return

    base_view, delta_view = f"_{view}_base", f"_{view}_deltas"
    _read_files(connection, table, bases).create_view(base_view, replace=True)
    _read_files(connection, table, deltas).create_view(delta_view, replace=True)
    # `keys` comes from ROW_KEYS. The anti and semi joins split the base by whether a delta
    # has a newer version of the row.
    keys = ", ".join(ROW_KEYS[table])
    connection.execute(
        f"CREATE OR REPLACE VIEW {view} AS "
        f"SELECT * FROM {base_view} ANTI JOIN {delta_view} USING ({keys}) "
        "UNION ALL BY NAME "
        f"SELECT * FROM (SELECT * FROM {base_view} SEMI JOIN {delta_view} USING ({keys}) "
        f"UNION ALL BY NAME SELECT * FROM {delta_view}) {newest}"
    )


def _read_files(connection: duckdb.DuckDBPyConnection, table: str, paths: list[Path]) -> duckdb.DuckDBPyRelation:
    """Return the rows of the snapshot files `paths` of `table`, with the columns and types that the views show.

    union_by_name gives files of older layouts one set of columns. view_columns then drops
    the omitted columns that older files still contain and casts narrowed columns back to
    the database's types, so the views show the columns that docs/schema.md lists.
    """
    files = connection.read_parquet([str(path) for path in paths], union_by_name=True)
    return files.query("files", f"SELECT {view_columns(table, files.columns)} FROM files")


def _define_views(connection: duckdb.DuckDBPyConnection, folder: Path, manifest: Manifest) -> None:
    for view, table in VIEWS.items():
        files = manifest.files(table)
        if not files:
            raise SnapshotError(
                f"The snapshot manifest in {folder} lists no file for the {table} table. Stop "
                "persistence, delete the folder and start it again, so that it publishes a full copy."
            )

        _define_newest_rows(connection, view, table, [folder / f.path for f in files if f.kind == "base"],
                            [folder / f.path for f in files if f.kind == "delta"])  # fmt: skip

    for statement in _DERIVED_OBJECTS:
        connection.execute(statement)

    connection.execute(
        "CREATE OR REPLACE TABLE snapshot_info (snapshot_dir VARCHAR, generation BIGINT, watermark BIGINT, "
        "checked_at TIMESTAMPTZ, loaded_at TIMESTAMPTZ)"
    )
    connection.execute(
        "INSERT INTO snapshot_info VALUES (?, ?, ?, ?, ?)",
        [str(folder), manifest.generation, manifest.watermark, manifest.checked_at, datetime.now(timezone.utc)],
    )


def run_query(connection: duckdb.DuckDBPyConnection, sql: str) -> duckdb.DuckDBPyRelation | None:
    """Run `sql` and return its rows as a relation held in memory, or None for a statement without rows.

    Raises SnapshotQueryError when the SQL is invalid (syntax, an unknown view or column, a
    failed cast) and SnapshotError when reading the snapshot fails.
    """
    try:
        relation = connection.sql(sql)
        return relation.materialize() if relation is not None else None
    except _QUERY_ERRORS as error:
        raise SnapshotQueryError(
            "Invalid query; fix it and run it again. The views are feedback, notifications, "
            f"feedback_daily and snapshot_info, and docs/schema.md lists their columns.\n{error}"
        ) from error
    except duckdb.Error as error:
        raise SnapshotError(f"The query failed while reading the snapshot: {error}") from error


def count_since(connection: duckdb.DuckDBPyConnection, view: str, since: datetime) -> int:
    """Return the number of rows of `view` ("feedback" or "notifications") at or after `since`."""
    time_column = EXPORT_TIME_COLUMNS[view]
    try:
        # `view` and `time_column` come from EXPORT_TIME_COLUMNS: identifiers cannot be parameters.
        return connection.execute(f"SELECT count(*) FROM {view} WHERE {time_column} >= ?", [since]).fetchall()[0][0]
    except duckdb.Error as error:
        raise SnapshotError(f"Failed to count the {view} rows since {since.isoformat()}: {error}") from error


def export(
    connection: duckdb.DuckDBPyConnection,
    *,
    view: str,
    since: datetime,
    output: Path,
    file_format: ExportFormat,
    on_progress: Callable[[float], None] | None = None,
    progress_interval_s: float = 0.5,
) -> int:
    """Write the rows of `view` at or after `since`, oldest first, to `output`; return the row count.

    The file is written under a temporary name in the same folder and renamed when
    complete, so a failed or interrupted export leaves no partial file. `on_progress` receives DuckDB's
    estimate of the share done, in percent, every `progress_interval_s` while the copy runs.
    Raises SnapshotError.
    """
    time_column = EXPORT_TIME_COLUMNS[view]
    options = "FORMAT parquet, COMPRESSION zstd" if file_format == "parquet" else "FORMAT csv, HEADER true"
    temp = output.with_name(f".{output.name}.{uuid.uuid4().hex}.tmp")
    # The row key after the time makes the order total, so two exports of one snapshot match.
    order = ", ".join(dict.fromkeys([time_column, *ROW_KEYS[VIEWS[view]]]))
    # `view`, `time_column`, `order` and `options` come from the constants above, never from input.
    statement = f"COPY (SELECT * FROM {view} WHERE {time_column} >= ? ORDER BY {order}) TO ? ({options})"

    try:
        connection.execute("SET enable_progress_bar = true")
        connection.execute("SET enable_progress_bar_print = false")
        rows = _run_with_progress(connection, statement, [since, str(temp)], on_progress, progress_interval_s)
        os.replace(temp, output)
    except duckdb.Error as error:
        temp.unlink(missing_ok=True)
        raise SnapshotError(f"Failed to export {view} to {output}: {error}") from error
    except OSError as error:
        temp.unlink(missing_ok=True)
        raise SnapshotError(
            f"Failed to write {output}: {error}. Choose a writable --output path with free space."
        ) from error
    except KeyboardInterrupt:
        temp.unlink(missing_ok=True)
        raise

    logger.info("Exported %d %s row(s) since %s to %s", rows, view, since.isoformat(), output)
    return rows


def _run_with_progress(
    connection: duckdb.DuckDBPyConnection,
    statement: str,
    parameters: list[object],
    on_progress: Callable[[float], None] | None,
    interval_s: float,
) -> int:
    """Run a COPY on a worker thread and report `query_progress` from this one; return its row count."""
    outcome: dict[str, object] = {}

    def copy() -> None:
        try:
            outcome["rows"] = connection.execute(statement, parameters).fetchall()[0][0]
        except duckdb.Error as error:
            outcome["error"] = error

    worker = threading.Thread(target=copy, name="snapshot-export", daemon=True)
    worker.start()
    try:
        while True:
            worker.join(interval_s)
            if not worker.is_alive():
                break
            # query_progress is -1 until DuckDB has an estimate.
            progress = connection.query_progress()
            if on_progress is not None and progress >= 0:
                on_progress(progress)
    except KeyboardInterrupt:
        connection.interrupt()
        worker.join()
        raise

    if "error" in outcome:
        raise outcome["error"]
    return int(outcome["rows"])


def parse_since(text: str) -> datetime:
    """Parse YYYY-MM-DD or an ISO 8601 date and time; a value without a zone is UTC.

    Raises ValueError with the accepted forms.
    """
    value = text.strip()
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"invalid date {text!r}: expected YYYY-MM-DD or an ISO 8601 time such as 2026-12-01T08:00:00+01:00"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed


def snapshot_age_s(connection: duckdb.DuckDBPyConnection) -> float:
    """Return the seconds since persistence last brought the connection's snapshot up to date."""
    try:
        checked_at = connection.execute("SELECT checked_at FROM snapshot_info").fetchall()[0][0]
    except duckdb.Error as error:
        raise SnapshotError(
            f"This connection has no snapshot_info table ({error}); open it with feedbackbot.analysis.connect()."
        ) from error
    return time.time() - checked_at.timestamp()
