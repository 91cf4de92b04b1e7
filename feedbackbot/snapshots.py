"""Parquet snapshots of the feedback database, for readers that cannot open the DuckDB file.

DuckDB lets one process open a database file for writing, and then no other process can
open it, not even to read. The persistence deployment keeps the file open, so notebooks,
`feedbackbot export` and `feedbackbot query` read a folder of Parquet files instead, which
persistence publishes through a `SnapshotPublisher`:

    <snapshot_dir>/
        manifest.json                         the current file set, replaced atomically
        feedback/base-000000000007.parquet    newest version of each row up to a change_seq
        feedback/delta-000000000012.parquet   rows inserted or updated since the file before
        outbox/...                            the same for the outbox table
        .publisher.lock                       held by the one publisher of the folder

Every row of `feedback` and `outbox` carries `change_seq`, drawn from one DuckDB sequence on
each insert and update (schema version 2). `publish` runs on the writer's thread between
transactions: it copies the rows whose change_seq is above the manifest's watermark into one
delta file per table. `compact` runs on its own thread with its own in-memory DuckDB
connection that reads only the Parquet files: it merges a table's base and deltas into a new
base that keeps the version of each row (identified by ROW_KEYS) with the highest change_seq.
The files leave out the columns in OMITTED_COLUMNS, which the database keeps.

Guarantees:

- A file is written under a temporary name that starts with "." and ends with ".tmp".
  It is flushed with fsync and renamed into place with `os.replace`, and only then does the
  manifest list it. A reader that follows the manifest therefore never opens a partial file.
- For each table, the files of a manifest hold every row with change_seq up to the
  manifest's watermark, in the version current at that watermark. A row can appear in
  several files; the version with the highest change_seq is the current one
  (`feedbackbot.analysis` builds its views that way).
- Both tables are copied in one read transaction, so a manifest shows them at one moment.
- A file that compaction replaces stays on disk for `snapshot_grace_s` after the manifest
  that drops it is written. A reader that read the manifest less than that long ago finds
  every file it lists. A reader that keeps a file list longer must read the manifest again.
- The watermark and the replaced files with their times live in the manifest, so they
  survive a restart. When the publisher opens, it deletes files that no manifest lists:
  temporary files and files renamed into place just before a crash.
- One publisher per folder: `open` takes an exclusive `flock` on `.publisher.lock`.
- Some events make the next publish copy both tables in full into new base files and retire
  all other files: the folder has no manifest yet, the database path changed, its sequence
  is behind the watermark (a restored backup or a new file), or a listed file is missing.
  When the two tables hold more than `INLINE_FULL_COPY_MAX_ROWS` rows together, `publish`
  pins a read transaction on a cursor of the writer's connection, as a rewrite does (below),
  and a thread of its own copies from it while the writer goes on committing. Until the new
  manifest is written, readers see the manifest from before: none at all on the first
  publish, the old database's files after a replacement. A marker file keeps the request
  until the copy installs, so a restart repeats it.
- Deltas wait for a full copy: while it runs, `publish` writes no file and leaves the
  manifest alone. The full copy's manifest has the pin's change_seq as its watermark, so
  the next publish copies the rows committed during the copy as its delta, each once.
- Deleted rows leave no change_seq behind. After an erasure or a retention run, persistence
  calls `request_rewrite`, and the next publish pins a read transaction on a cursor of the
  writer's connection and hands it to a thread that copies both tables into new base files.
  The writer goes on committing meanwhile. The new manifest lists the new bases plus the
  deltas published since the pin, and retires every file listed at the pin, so a reader
  that follows it sees no deleted row and no blanked value once the copy is done.

Limits:

- `publish` relies on being the only writer. A row whose change_seq was drawn by a
  transaction that commits after the publish started would be skipped for good. Calling it
  on the writer's thread between transactions rules that out.
- A publish that finds changes scans both tables for change_seq above the watermark; DuckDB
  skips row groups whose change_seq range lies below it, so cost grows with recent changes.
  A full copy of at most `INLINE_FULL_COPY_MAX_ROWS` rows also runs on the writer's thread,
  so it holds up commits about as long as a delta of that size.
- While a full copy runs in the background, readers see no new rows, for as long as it
  takes: 33.6 s for 10 million feedback rows and 12.7 million outbox entries in
  docs/snapshot-benchmark.md, when that copy still ran inline.
- Compaction rewrites the whole base, and every replaced base stays for the grace period,
  so disk use can reach one base per compaction within `snapshot_grace_s`.
- The snapshots hold the same personal data as the database (customer names, email
  addresses and texts), so give the folder the same permissions as the database file.
  Files retired by a rewrite keep erased rows on disk for `snapshot_grace_s`, for readers
  that still hold the older manifest.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

import duckdb

from feedbackbot.errors import SnapshotError, SnapshotNotFound
from feedbackbot.settings import resolve_path
from feedbackbot.snapshot_manifest import (
    MANIFEST_NAME,
    FileKind,
    Manifest,
    RetiredFile,
    SnapshotFile,
    read_manifest,
)
from feedbackbot.snapshot_settings import SnapshotSettings

logger = logging.getLogger(__name__)

LOCK_NAME = ".publisher.lock"
# Present from request_rewrite until a rewrite has installed its files, so that a request
# survives a restart of the publisher.
REWRITE_MARKER_NAME = ".rewrite-requested"
# Present from the start of a background full copy until it has installed its files. A
# restart must repeat the copy, because the database may by then have drawn change_seq
# values above the old manifest's watermark, which hides the reason for the copy.
FULL_COPY_MARKER_NAME = ".full-copy-requested"
SPILL_DIR_NAME = ".spill"
TEMP_PREFIX = "."
TEMP_SUFFIX = ".tmp"

# The store's tables that snapshots copy. Each has the column `change_seq` and the columns of
# its ROW_KEYS entry.
TABLES = ("feedback", "outbox")
CHANGE_SEQUENCE = "change_seq"

# Options of every COPY that writes a snapshot file. PARQUET_VERSION V2 lets DuckDB 2.0 write
# DELTA_BINARY_PACKED integers and timestamps, DELTA_LENGTH_BYTE_ARRAY strings and
# BYTE_STREAM_SPLIT floats. On 400,000 rows from bench/snapshot_scale_data.py, spaced as in
# its 10 million row run, that cut the compacted files from 196.5 to 188.8 bytes per feedback
# row, outbox included, with no measurable change in the CPU time of the copy.
PARQUET_OPTIONS = "FORMAT parquet, COMPRESSION zstd, PARQUET_VERSION V2"

# Columns that the files store in a narrower type than the database, per table, as
# column -> (type in the files, type in the database). `feedbackbot.analysis` casts them
# back. Files written before the narrowing hold the database type, and read_parquet with
# union_by_name widens the column to it when it reads them together with newer files.
# The sentiment models compute scores in float32, so FLOAT keeps them exactly, and it
# saved a further 3.5 bytes per row in the same measurement.
NARROWED_COLUMNS: dict[str, dict[str, tuple[str, str]]] = {
    "feedback": {"sentiment_score": ("FLOAT", "DOUBLE")},
    "outbox": {},
}

# Columns that the database keeps but the snapshot files leave out, per table. Random 128-bit
# ids do not compress below their 16 bytes. In the 10 million row run of bench/snapshot_scale.py
# with them, the compacted files took 185 bytes per feedback row, outbox entries included, of
# which feedback.request_id (32 hex characters) took 16.6 and outbox.id 20.3. Without them the
# same run measured 1.38 GiB instead of 1.73 GiB (docs/snapshot-benchmark.md; target 1.5 GiB).
# GET /v1/feedback/{id} returns a row's request_id, and GET /v1/admin/outbox lists entries
# with their ids. Files written before the columns were left out still contain them, so every
# select list drops them by name.
OMITTED_COLUMNS: dict[str, tuple[str, ...]] = {
    "feedback": ("request_id",),
    "outbox": ("id",),
}

# Columns that identify a row of each table in the snapshot files, for the window that keeps
# the newest version of each row (compaction here, the views of feedbackbot.analysis). No
# UPDATE changes them. The outbox key is unique because a commit inserts one confirmation to
# `customer` and one alert per admin target (NotificationPolicy removes duplicate targets).
# Late scoring (FeedbackStore.complete_enrichment) inserts alerts later than the commit and
# at most once per row, because its UPDATE matches only rows still without sentiment.
# NOTE: alerts stored for two equal admin URLs before NotificationPolicy removed duplicates
# share one key, so the snapshots show one entry of each such pair.
ROW_KEYS: dict[str, tuple[str, ...]] = {
    "feedback": ("id",),
    "outbox": ("feedback_id", "target", "created_at"),
}


def file_columns(table: str, columns: Sequence[str]) -> str:
    """Return the select list that writes rows of `table` as the snapshot files store them.

    `columns` are the names of the source's columns: the database table, or snapshot files,
    which may lack an omitted column. The list leaves out OMITTED_COLUMNS and casts
    NARROWED_COLUMNS to their type in the files.
    """
    casts = {column: file_type for column, (file_type, _) in NARROWED_COLUMNS[table].items()}
    return _select_list(table, columns, casts)


def view_columns(table: str, columns: Sequence[str]) -> str:
    """Return the select list that shows rows read from the snapshot files of `table` with the database's types.

    Leaves out OMITTED_COLUMNS, which files written before they were omitted still contain.
    """
    casts = {column: view_type for column, (_, view_type) in NARROWED_COLUMNS[table].items()}
    return _select_list(table, columns, casts)


def newest_version_filter(table: str) -> str:
    """Return the QUALIFY clause that keeps the version of each row of `table` with the highest change_seq."""
    return f"QUALIFY row_number() OVER (PARTITION BY {', '.join(ROW_KEYS[table])} ORDER BY change_seq DESC) = 1"


def _select_list(table: str, columns: Sequence[str], casts: Mapping[str, str]) -> str:
    # An explicit list, because `* EXCLUDE (column)` fails on files that lack the column.
    items = []
    for column in columns:
        if column in OMITTED_COLUMNS[table]:
            continue
        name = _quote_identifier(column)
        items.append(f"CAST({name} AS {casts[column]}) AS {name}" if column in casts else name)
    return ", ".join(items)


def _quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# Maximum sleep of the idle compaction thread before it looks for expired files again.
IDLE_CHECK_S = 60.0
# Maximum wait before the compaction thread retries after a failure.
COMPACTION_RETRY_MAX_S = 300.0
# Maximum wait in `close` for a running rewrite; its marker file makes the next start repeat it.
REWRITE_CLOSE_TIMEOUT_S = 60.0
# Maximum rows of both tables together that `publish` copies in full on the writer's thread;
# larger full copies run in the background. One 5 s publish interval of
# bench/snapshot_scale.py gives a delta of about 16,400 rows, which took 31 to 44 ms in
# docs/snapshot-benchmark.md, so an inline full copy holds up commits about as long.
INLINE_FULL_COPY_MAX_ROWS = 20_000

@dataclass(frozen=True)
class PublishReport:
    """Result of one `publish` call.

    `rows` counts the rows copied per table, and `files` lists the new files relative to
    the snapshot folder. `full_copy_reason` is set when both tables were copied in full,
    and also when a full copy runs in the background or waits to start there: then
    `full_copy_running` is true, `rows` and `files` are empty, and `watermark` is the
    unchanged manifest's (0 without one). `wait_for_rewrite` waits for a running copy.
    `duration_s` is the time the call held the writer's thread.
    """

    watermark: int
    rows: Mapping[str, int]
    files: tuple[str, ...]
    full_copy_reason: str | None
    duration_s: float
    full_copy_running: bool = False


@dataclass(frozen=True)
class _FullCopy:
    """A full copy of both tables that runs on its own thread from a pinned read transaction.

    A rebuild (`rebuild` true) replaces a snapshot that is missing or that no longer matches
    the database, and deltas wait until it is installed. A rewrite (`rebuild` false) drops
    deleted rows from a matching snapshot while deltas go on. Its new bases replace the
    files listed at the pin, `replaced`.
    """

    reason: str
    rebuild: bool
    latest: int
    database: str
    pinned_at: datetime
    replaced: Mapping[str, tuple[SnapshotFile, ...]]
    # The request_rewrite reason that a rebuild took over, given back when it fails.
    rewrite_reason: str | None = None


@dataclass(frozen=True)
class CompactionReport:
    """Result of one `compact` call: the new base files, the files it retired, and row counts per table."""

    files: tuple[str, ...]
    retired: tuple[str, ...]
    rows: Mapping[str, int]
    duration_s: float


@dataclass(frozen=True)
class _CompactionPlan:
    table: str
    inputs: tuple[SnapshotFile, ...]
    output: str

    @property
    def max_change_seq(self) -> int:
        return max(snapshot_file.max_change_seq for snapshot_file in self.inputs)


class SnapshotPublisher:
    """Publishes the writer's changes as Parquet files and compacts them.

    Open it with `open` in the persistence replica after the FeedbackStore. Call `publish`
    every `snapshot_publish_interval_s` on the thread that owns the writer's connection,
    between transactions. Call `start_compaction` once to run compaction and the deletion of
    expired files on a background thread, and `close` when the replica stops.
    """

    def __init__(
        self,
        folder: Path,
        settings: SnapshotSettings,
        manifest: Manifest | None,
        lock_file: IO[str],
        clock: Callable[[], float],
        inline_full_copy_max_rows: int = INLINE_FULL_COPY_MAX_ROWS,
    ) -> None:
        self.folder = folder
        self._settings = settings
        self._manifest = manifest
        self._lock_file = lock_file
        self._clock = clock
        self._inline_full_copy_max_rows = inline_full_copy_max_rows
        self._next_file_number = manifest.next_file_number if manifest else 1
        # Set from the moment a full copy is found necessary until one has installed its
        # files, even when the evidence for it disappears meanwhile. Guarded by _state_lock.
        self._full_copy_reason: str | None = None

        # _state_lock guards _manifest, _next_file_number and _compaction_connection; it is
        # held only for renames and manifest writes, never while DuckDB copies rows.
        self._state_lock = threading.Lock()
        self._compaction_lock = threading.Lock()
        self._compaction_connection: duckdb.DuckDBPyConnection | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

        # A full rewrite drops deleted rows from the files (see request_rewrite). The reason
        # and the error are guarded by _state_lock. _rewrite_requested stays set from the
        # request, or from the need for a full copy, until a copy that started after it has
        # installed its files. Compaction skips its merges meanwhile.
        self._rewrite_reason: str | None = None
        self._rewrite_error: str | None = None
        self._rewrite_requested = threading.Event()
        # The thread of the running rewrite or background full copy, and its job.
        self._rewrite_thread: threading.Thread | None = None
        self._running_copy: _FullCopy | None = None

    @classmethod
    def open(
        cls,
        settings: SnapshotSettings,
        *,
        clock: Callable[[], float] = time.time,
        inline_full_copy_max_rows: int = INLINE_FULL_COPY_MAX_ROWS,
    ) -> "SnapshotPublisher":
        """Lock the snapshot folder, load its manifest and delete files that no manifest lists.

        `clock` returns seconds since the epoch; tests pass a fake one. A full copy of more
        rows than `inline_full_copy_max_rows` runs in the background. Raises SnapshotError
        when the folder cannot be created or locked, or its manifest is invalid.
        """
        folder = resolve_path(settings.snapshot_dir)
        try:
            for table in TABLES:
                (folder / table).mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise SnapshotError(
                f"Failed to create the snapshot folder {folder}: {error}. Set snapshot_dir to a writable location."
            ) from error

        lock_file = _lock_folder(folder)
        try:
            manifest = read_manifest(folder)
        except SnapshotNotFound:
            manifest = None
        except SnapshotError:
            _unlock_folder(lock_file)
            raise

        publisher = cls(folder, settings, manifest, lock_file, clock, inline_full_copy_max_rows)
        if (folder / REWRITE_MARKER_NAME).exists():
            publisher._rewrite_reason = "a rewrite requested before the last stop had not finished"
            publisher._rewrite_requested.set()
        if (folder / FULL_COPY_MARKER_NAME).exists():
            publisher._full_copy_reason = "a full copy started before the last stop had not finished"
            publisher._rewrite_requested.set()
        try:
            publisher._check_listed_files()
            publisher._delete_unlisted_files()
        except OSError as error:
            _unlock_folder(lock_file)
            raise SnapshotError(f"Failed to list the files of the snapshot folder {folder}: {error}") from error

        if manifest is None:
            logger.info("Opened the empty snapshot folder %s", folder)
        else:
            logger.info(
                "Opened the snapshot folder %s at watermark %d, generation %d, with %d retired file(s)",
                folder,
                manifest.watermark,
                manifest.generation,
                len(manifest.retired),
            )
        return publisher

    @property
    def manifest(self) -> Manifest | None:
        """The manifest as last written, or None before the first publish."""
        with self._state_lock:
            return self._manifest

    @property
    def settings(self) -> SnapshotSettings:
        """The settings the publisher was opened with."""
        return self._settings

    # -- publish ------------------------------------------------------------------------------

    def publish(self, connection: duckdb.DuckDBPyConnection) -> PublishReport:
        """Copy the rows changed since the last publish into delta files and list them in the manifest.

        Call it with the writer's connection, on the thread that owns it, between
        transactions: it opens a read transaction of its own. The first publish, and one
        after the database was replaced, copies both tables in full: inline when they hold
        at most `inline_full_copy_max_rows` rows, else on a background thread that it
        starts. While that copy runs, publish copies nothing (see the module docstring).
        Writes the manifest even when nothing changed, so that `checked_at` shows readers
        how fresh the data is. Raises SnapshotError; the manifest then stays as it was.
        """
        started = time.monotonic()
        with self._state_lock:
            manifest = self._manifest
            forced_reason = self._full_copy_reason
            running = self._running_copy

        if running is not None and running.rebuild:
            # Deltas wait for the full copy's manifest, whose watermark they start from.
            return self._report_full_copy_running(running.reason, manifest, started)

        self._begin_read_transaction(connection)
        latest, database, full_copy_reason, copies = self._copy_in_transaction(
            connection, manifest, forced_reason, copy_inline=running is None
        )

        if latest is None:
            raise SnapshotError(
                f"The database {database} has no {CHANGE_SEQUENCE} sequence, so no snapshot can be "
                "published. Open it once with FeedbackStore, which migrates it to schema version 2."
            )
        if copies is None:
            self._start_full_copy(connection, full_copy_reason, database)
            return self._report_full_copy_running(full_copy_reason, manifest, started)

        try:
            for temp, _ in copies.values():
                _fsync_file(temp)
            files = self._install_copies(copies, latest, database, full_copy_reason)
        except OSError as error:
            _remove_quietly(temp for temp, _ in copies.values())
            raise SnapshotError(
                f"Failed to write the snapshot in {self.folder}: {error}. Check free space and "
                "permissions; the next publish tries again."
            ) from error

        report = PublishReport(
            watermark=latest,
            rows={table: rows for table, (_, rows) in copies.items()},
            files=files,
            full_copy_reason=full_copy_reason,
            duration_s=time.monotonic() - started,
        )
        self._log_publish(report)
        self._start_requested_rewrite(connection)

        with self._state_lock:
            manifest = self._manifest
        if any(manifest.delta_count(table) >= self._settings.snapshot_compaction_deltas for table in TABLES):
            self._wake.set()
        return report

    def _begin_read_transaction(self, connection: duckdb.DuckDBPyConnection) -> None:
        try:
            # A failed BEGIN would abort the writer's open transaction, so look first.
            if _in_explicit_transaction(connection):
                raise SnapshotError(
                    f"The writer's connection has an open transaction, so no snapshot was published to "
                    f"{self.folder}. Call publish between the writer's transactions, on the thread that owns it."
                )
            connection.execute("BEGIN TRANSACTION")
        except duckdb.Error as error:
            raise SnapshotError(
                f"Failed to start a read transaction for the snapshot in {self.folder}: {error}. "
                "Call publish between the writer's transactions, on the thread that owns its connection."
            ) from error

    def _copy_in_transaction(
        self,
        connection: duckdb.DuckDBPyConnection,
        manifest: Manifest | None,
        forced_reason: str | None,
        *,
        copy_inline: bool,
    ) -> tuple[int | None, str, str | None, dict[str, tuple[Path, int]] | None]:
        """Copy each table's changes to a temporary file, then end the read transaction.

        Returns the sequence's last value (None when the sequence is missing), the database
        path, the reason for a full copy or None, and the temporary file and row count per
        table. The copies are None when a full copy is due that must run in the background:
        because the tables are too large for an inline copy, or because `copy_inline` is
        false. Raises SnapshotError after removing the temporary files.
        """
        copies: dict[str, tuple[Path, int]] = {}
        full_copy_reason: str | None = None
        try:
            latest = _latest_change_seq(connection)
            database = _database_path(connection)
            if latest is not None:
                full_copy_reason = forced_reason or _reason_for_full_copy(manifest, latest, database)
                if full_copy_reason and not (copy_inline and self._fits_inline(connection)):
                    connection.execute("COMMIT")
                    return latest, database, full_copy_reason, None

                after = 0 if full_copy_reason else manifest.watermark
                if full_copy_reason or latest > after:
                    for table in TABLES:
                        temp = self._temp_path(table)
                        # Recorded before the copy, so that a failed copy's partial file is removed.
                        copies[table] = (temp, 0)
                        copies[table] = (temp, _copy_changes(connection, table, after, latest, temp))
            connection.execute("COMMIT")
        except duckdb.Error as error:
            _rollback_quietly(connection)
            _remove_quietly(temp for temp, _ in copies.values())
            raise SnapshotError(
                f"Failed to copy changes into the snapshot folder {self.folder}: {error}. "
                "The snapshot stays as it was, and the next publish tries again."
            ) from error
        return latest, database, full_copy_reason, copies

    def _fits_inline(self, connection: duckdb.DuckDBPyConnection) -> bool:
        """Return whether both tables together hold at most `inline_full_copy_max_rows` rows.

        DuckDB's estimated_size comes from the table's metadata, so the check reads no rows.
        """
        rows = connection.execute(
            "SELECT coalesce(sum(estimated_size), 0) FROM duckdb_tables() "
            "WHERE database_name = current_database() AND table_name IN (?, ?)",
            list(TABLES),
        ).fetchall()
        return rows[0][0] <= self._inline_full_copy_max_rows

    def _report_full_copy_running(self, reason: str, manifest: Manifest | None, started: float) -> PublishReport:
        logger.debug("Published nothing because a full snapshot copy runs in the background (%s)", reason)
        return PublishReport(
            watermark=manifest.watermark if manifest else 0,
            rows={},
            files=(),
            full_copy_reason=reason,
            duration_s=time.monotonic() - started,
            full_copy_running=True,
        )

    def _install_copies(
        self, copies: Mapping[str, tuple[Path, int]], latest: int, database: str, full_copy_reason: str | None
    ) -> tuple[str, ...]:
        """Rename the copies into place and write the manifest that lists them; return their paths."""
        now = self._now()
        kind: FileKind = "base" if full_copy_reason else "delta"

        with self._state_lock:
            manifest = self._manifest
            tables = {table: () if full_copy_reason or manifest is None else manifest.files(table) for table in TABLES}
            retired = list(manifest.retired) if manifest else []
            if full_copy_reason and manifest is not None:
                retired.extend(RetiredFile(f.path, now) for table in TABLES for f in manifest.files(table))

            written = []
            for table, (temp, rows) in copies.items():
                # An empty delta adds nothing, but a full copy keeps its empty base file so
                # that readers learn the table's columns.
                if kind == "delta" and rows == 0:
                    temp.unlink(missing_ok=True)
                    continue
                relative = self._allocate_path(table, kind)
                os.replace(temp, self.folder / relative)
                tables[table] = tables[table] + (SnapshotFile(relative, kind, rows, latest),)
                written.append(relative)

            updated = Manifest(
                generation=manifest.generation + 1 if manifest else 1,
                database=database,
                watermark=latest,
                checked_at=now,
                next_file_number=self._next_file_number,
                tables=tables,
                retired=tuple(retired),
            )
            self._write_manifest(updated)
            self._manifest = updated
            if full_copy_reason:
                self._full_copy_reason = None
                self._clear_satisfied_requests()

        return tuple(written)

    def _clear_satisfied_requests(self) -> None:
        """Delete the marker of each request that no longer waits for a copy; call with _state_lock held."""
        if self._rewrite_reason is None:
            (self.folder / REWRITE_MARKER_NAME).unlink(missing_ok=True)
        if self._full_copy_reason is None:
            (self.folder / FULL_COPY_MARKER_NAME).unlink(missing_ok=True)
        if self._rewrite_reason is None and self._full_copy_reason is None:
            self._rewrite_requested.clear()

    def _log_publish(self, report: PublishReport) -> None:
        if report.full_copy_reason:
            logger.info(
                "Published a full snapshot copy (%s) at watermark %d: %s rows in %.2f s",
                report.full_copy_reason,
                report.watermark,
                dict(report.rows),
                report.duration_s,
            )
        elif report.files:
            logger.debug(
                "Published %s changed rows at watermark %d in %.3f s",
                dict(report.rows),
                report.watermark,
                report.duration_s,
            )

    # -- rewrite ------------------------------------------------------------------------------

    def request_rewrite(self, reason: str) -> None:
        """Ask for a full rewrite of both tables, to drop rows deleted or blanked in the database.

        Call it after committing a DELETE or an UPDATE that removes data (an erasure, a
        retention run). Deltas cannot carry a deletion, and an older file still contains the
        blanked values, so the rewrite copies both tables anew and retires every file the
        manifest listed before. The next `publish` starts it, and it interrupts a running
        compaction, whose result the rewrite would retire anyway.
        """
        with self._state_lock:
            self._rewrite_reason = reason
            self._rewrite_requested.set()
            try:
                marker = self.folder / REWRITE_MARKER_NAME
                marker.write_text(reason + "\n", encoding="utf-8")
                _fsync_file(marker)
            except OSError as error:
                # The request in memory still works; only a restart before the rewrite loses it.
                logger.warning("Failed to record the snapshot rewrite request in %s: %s", self.folder, error)
            if self._compaction_connection is not None:
                try:
                    self._compaction_connection.interrupt()
                except duckdb.Error as error:
                    logger.warning("Failed to interrupt the running snapshot compaction: %s", error)
        logger.info("Requested a full snapshot rewrite of %s: %s", self.folder, reason)

    @property
    def rewrite_pending(self) -> bool:
        """Whether a requested rewrite or a needed full copy has not yet installed its files."""
        return self._rewrite_requested.is_set()

    @property
    def rewrite_error(self) -> str | None:
        """The error of the last failed rewrite or background full copy, or None after one succeeded."""
        with self._state_lock:
            return self._rewrite_error

    def _start_requested_rewrite(self, connection: duckdb.DuckDBPyConnection) -> None:
        """Pin a read transaction for a requested rewrite and copy from it on a thread of its own.

        Runs on the writer's thread between transactions, so the pinned transaction sees
        every committed row and no change_seq drawn by an uncommitted one. The copy then
        runs beside the writer, which goes on committing. The rewrite holds the compaction
        lock until it has installed its files, so no merge of the old files can be listed
        after it.
        """
        with self._state_lock:
            # A pending full copy replaces every file too, so it serves the request.
            if (
                self._rewrite_reason is None
                or self._full_copy_reason is not None
                or self._manifest is None
                or self._running_copy is not None
                or self._closed
            ):
                return
        if not self._compaction_lock.acquire(blocking=False):
            # request_rewrite interrupted the merge; the next publish starts the rewrite.
            return

        with self._state_lock:
            reason, self._rewrite_reason = self._rewrite_reason, None
            manifest = self._manifest
        pinned_at = self._now()
        try:
            cursor, latest = _pin_read_transaction(connection)
        except duckdb.Error as error:
            self._compaction_lock.release()
            with self._state_lock:
                self._rewrite_reason = self._rewrite_reason or reason
                self._rewrite_error = f"Failed to start the snapshot rewrite: {error}"
            logger.error("Failed to start the snapshot rewrite (%s); the next publish tries again: %s", reason, error)
            return

        job = _FullCopy(
            reason=reason,
            rebuild=False,
            latest=latest,
            database=manifest.database,
            pinned_at=pinned_at,
            replaced={table: manifest.files(table) for table in TABLES},
        )
        self._copy_in_background(cursor, job)

    def _start_full_copy(self, connection: duckdb.DuckDBPyConnection, reason: str, database: str) -> None:
        """Pin a read transaction and copy both tables in full from it on a thread of its own.

        Runs on the writer's thread between transactions, as `_start_requested_rewrite`
        does. The need for the copy is kept in memory and in a marker file until the copy
        installs, so a copy that cannot start yet, fails or is cut short by a stop runs
        again. Raises SnapshotError when the read transaction cannot be pinned.
        """
        with self._state_lock:
            self._full_copy_reason = reason
            # Also stops compaction from merging files that the copy retires.
            self._rewrite_requested.set()
            running = self._running_copy
            self._write_full_copy_marker(reason)
        if running is not None or self._closed:
            # The running rewrite installs first, and the next publish starts the copy.
            return
        if not self._compaction_lock.acquire(blocking=False):
            self._interrupt_compaction()
            return

        with self._state_lock:
            # The copy pins after the request, so it drops the rows the request is about.
            rewrite_reason, self._rewrite_reason = self._rewrite_reason, None
            self._full_copy_reason = None
        pinned_at = self._now()
        try:
            cursor, latest = _pin_read_transaction(connection)
        except duckdb.Error as error:
            self._compaction_lock.release()
            with self._state_lock:
                self._full_copy_reason = self._full_copy_reason or reason
                self._rewrite_reason = self._rewrite_reason or rewrite_reason
            raise SnapshotError(
                f"Failed to start the full snapshot copy ({reason}) in {self.folder}: {error}. "
                "The next publish tries again."
            ) from error

        job = _FullCopy(
            reason=reason,
            rebuild=True,
            latest=latest,
            database=database,
            pinned_at=pinned_at,
            replaced={},
            rewrite_reason=rewrite_reason,
        )
        logger.info("Started a full snapshot copy in the background (%s) at change_seq %d", reason, latest)
        self._copy_in_background(cursor, job)

    def _write_full_copy_marker(self, reason: str) -> None:
        """Record a needed full copy on disk once; call with _state_lock held."""
        marker = self.folder / FULL_COPY_MARKER_NAME
        if marker.exists():
            return
        try:
            marker.write_text(reason + "\n", encoding="utf-8")
            _fsync_file(marker)
        except OSError as error:
            # The need in memory still works; only a restart before the copy loses it.
            logger.warning("Failed to record the needed full snapshot copy in %s: %s", self.folder, error)

    def _interrupt_compaction(self) -> None:
        """Stop a running merge, whose inputs a full copy retires. The next publish starts the copy."""
        with self._state_lock:
            if self._compaction_connection is None:
                return
            try:
                self._compaction_connection.interrupt()
            except duckdb.Error as error:
                logger.warning("Failed to interrupt the running snapshot compaction: %s", error)

    def _copy_in_background(self, cursor: duckdb.DuckDBPyConnection, job: _FullCopy) -> None:
        name = "snapshot-full-copy" if job.rebuild else "snapshot-rewrite"
        thread = threading.Thread(target=self._rewrite, args=(cursor, job), name=name, daemon=True)
        with self._state_lock:
            self._rewrite_thread = thread
            self._running_copy = job
        thread.start()

    def _rewrite(self, cursor: duckdb.DuckDBPyConnection, job: _FullCopy) -> None:
        """Copy both tables from the pinned transaction into new base files and install them."""
        started = time.monotonic()
        copies: dict[str, tuple[Path, int]] = {}
        try:
            for table in TABLES:
                temp = self._temp_path(table)
                # Recorded before the copy, so that a failed copy's partial file is removed.
                copies[table] = (temp, 0)
                copies[table] = (temp, _copy_changes(cursor, table, 0, job.latest, temp))
            cursor.execute("COMMIT")
            for temp, _ in copies.values():
                _fsync_file(temp)
            files = self._install_full_copy(copies, job)
        except (duckdb.Error, OSError) as error:
            _remove_quietly(temp for temp, _ in copies.values())
            with self._state_lock:
                if job.rebuild:
                    self._full_copy_reason = self._full_copy_reason or job.reason
                    self._rewrite_reason = self._rewrite_reason or job.rewrite_reason
                else:
                    self._rewrite_reason = self._rewrite_reason or job.reason
                self._rewrite_error = f"Failed to copy the snapshot in full in {self.folder}: {error}"
            logger.error("Failed to copy the snapshot in full (%s); the next publish tries again: %s", job.reason, error)
            return
        finally:
            cursor.close()
            with self._state_lock:
                self._running_copy = None
            self._compaction_lock.release()

        logger.info(
            "Copied the snapshot in full (%s) at change_seq %d: %s rows in %s, %.2f s",
            job.reason,
            job.latest,
            {table: rows for table, (_, rows) in copies.items()},
            ", ".join(files),
            time.monotonic() - started,
        )
        # Compaction skipped its merges while the copy was pending.
        self._wake.set()

    def _install_full_copy(self, copies: Mapping[str, tuple[Path, int]], job: _FullCopy) -> list[str]:
        """List the new base files in place of the files they replace; raises OSError.

        A rewrite replaces the files listed at the pin. Files that publishes added after
        the pin stay listed: they were copied from the database after the deletion, and
        for a row they share with the new base their higher change_seq wins. A rebuild
        replaces every listed file, because no delta was published since its pin, and its
        manifest takes the database, watermark and time of the pin.
        """
        now = self._now()
        with self._state_lock:
            manifest = self._manifest
            tables = {}
            retired = list(manifest.retired) if manifest else []
            written = []
            for table in TABLES:
                temp, rows = copies[table]
                relative = self._allocate_path(table, "base")
                os.replace(temp, self.folder / relative)
                written.append(relative)
                current = manifest.files(table) if manifest else ()
                old = set(current) if job.rebuild else set(job.replaced[table])
                tables[table] = (SnapshotFile(relative, "base", rows, job.latest),) + tuple(
                    f for f in current if f not in old
                )
                retired.extend(RetiredFile(f.path, now) for f in current if f in old)

            if job.rebuild:
                updated = Manifest(
                    generation=manifest.generation + 1 if manifest else 1,
                    database=job.database,
                    watermark=job.latest,
                    checked_at=job.pinned_at,
                    next_file_number=self._next_file_number,
                    tables=tables,
                    retired=tuple(retired),
                )
            else:
                updated = replace(
                    manifest,
                    generation=manifest.generation + 1,
                    next_file_number=self._next_file_number,
                    tables=tables,
                    retired=tuple(retired),
                )
            self._write_manifest(updated)
            self._manifest = updated
            self._rewrite_error = None
            self._clear_satisfied_requests()
        return written

    def wait_for_rewrite(self, timeout_s: float = 60.0) -> bool:
        """Wait up to `timeout_s` for a running rewrite or background full copy; return False when it still runs."""
        with self._state_lock:
            thread = self._rewrite_thread
        if thread is None or not thread.is_alive():
            return True
        thread.join(timeout_s)
        return not thread.is_alive()

    # -- compaction ---------------------------------------------------------------------------

    def compact(self, *, force: bool = False) -> CompactionReport:
        """Merge each table that has `snapshot_compaction_deltas` delta files into a new base.

        With `force`, merge every table that has more than one file. Runs on the calling
        thread with its own in-memory DuckDB connection, which reads only the Parquet files,
        so `publish` can run meanwhile. The replaced files stay listed as retired for the
        grace period. Raises SnapshotError; the manifest then stays as it was.
        """
        if self._rewrite_requested.is_set() and not force:
            # The rewrite replaces every file anyway; merging them first is wasted work.
            return CompactionReport(files=(), retired=(), rows={}, duration_s=0.0)

        with self._compaction_lock:
            started = time.monotonic()
            plans = self._plan_compaction(force)
            if not plans:
                return CompactionReport(files=(), retired=(), rows={}, duration_s=0.0)

            logger.info(
                "Started compacting snapshot table(s) %s: %d file(s)",
                ", ".join(plan.table for plan in plans),
                sum(len(plan.inputs) for plan in plans),
            )
            merged = self._merge_all(plans)
            try:
                installed = self._install_compaction(merged)
            except OSError as error:
                _remove_quietly(self.folder / plan.output for plan, _ in merged)
                raise SnapshotError(
                    f"Failed to write the snapshot manifest in {self.folder} after compaction: {error}. "
                    "Check free space and permissions; compaction tries again later."
                ) from error

            report = CompactionReport(
                files=tuple(plan.output for plan, _ in installed),
                retired=tuple(f.path for plan, _ in installed for f in plan.inputs),
                rows={plan.table: rows for plan, rows in installed},
                duration_s=time.monotonic() - started,
            )
            logger.info(
                "Compacted %d snapshot file(s) into %s in %.2f s",
                len(report.retired),
                ", ".join(report.files) or "nothing",
                report.duration_s,
            )
            return report

    def _plan_compaction(self, force: bool) -> list[_CompactionPlan]:
        threshold = self._settings.snapshot_compaction_deltas
        with self._state_lock:
            manifest = self._manifest
            if manifest is None:
                return []

            plans = []
            for table in TABLES:
                files = manifest.files(table)
                if manifest.delta_count(table) >= threshold or (force and len(files) > 1):
                    plans.append(_CompactionPlan(table, files, self._allocate_path(table, "base")))
            return plans

    def _merge_all(self, plans: list[_CompactionPlan]) -> list[tuple[_CompactionPlan, int]]:
        """Write a new base file per plan and rename it into place, unlisted; return the row counts."""
        connection = self._open_compaction_connection()
        merged: list[tuple[_CompactionPlan, int]] = []
        temp: Path | None = None
        try:
            for plan in plans:
                # A requested rewrite would retire this merge's output at once.
                if self._stop.is_set() or self._rewrite_requested.is_set():
                    break
                temp = self._temp_path(plan.table)
                rows = self._merge(connection, plan, temp)
                _fsync_file(temp)
                os.replace(temp, self.folder / plan.output)
                temp = None
                merged.append((plan, rows))
        except (duckdb.Error, OSError) as error:
            _remove_quietly([temp] if temp else [])
            _remove_quietly(self.folder / plan.output for plan, _ in merged)
            if self._rewrite_requested.is_set():
                # request_rewrite interrupted the merge on purpose.
                logger.info("Stopped compacting %s because a full rewrite of the snapshot was requested", self.folder)
                return []
            raise SnapshotError(
                f"Failed to compact the snapshot files in {self.folder}: {error}. The files stay "
                "as they were, and compaction tries again later; if it keeps failing, raise "
                "snapshot_compaction_memory_mib or free disk space."
            ) from error
        finally:
            with self._state_lock:
                self._compaction_connection = None
            connection.close()
        return merged

    def _open_compaction_connection(self) -> duckdb.DuckDBPyConnection:
        # One thread, so that compaction leaves the replica's other cores to ingestion.
        config = {
            "threads": 1,
            "memory_limit": f"{self._settings.snapshot_compaction_memory_mib}MiB",
            "temp_directory": str(self.folder / SPILL_DIR_NAME),
        }
        try:
            connection = duckdb.connect(":memory:", config=config)
        except duckdb.Error as error:
            raise SnapshotError(f"Failed to open an in-memory DuckDB connection for compaction: {error}") from error

        with self._state_lock:
            self._compaction_connection = connection
        return connection

    def _merge(self, connection: duckdb.DuckDBPyConnection, plan: _CompactionPlan, temp: Path) -> int:
        paths = [str(self.folder / snapshot_file.path) for snapshot_file in plan.inputs]
        # union_by_name: files written before a schema migration lack the new columns, and it
        # widens a narrowed column to the type of files written before the narrowing.
        # `plan.table` comes from TABLES, and file_columns quotes the files' column names.
        columns = file_columns(plan.table, connection.read_parquet(paths, union_by_name=True).columns)
        rows = connection.execute(
            f"COPY (SELECT {columns} FROM read_parquet(?, union_by_name = true) "
            f"{newest_version_filter(plan.table)} ORDER BY change_seq) TO ? ({PARQUET_OPTIONS})",
            [paths, str(temp)],
        ).fetchall()
        return int(rows[0][0])

    def _install_compaction(
        self, merged: list[tuple[_CompactionPlan, int]]
    ) -> list[tuple[_CompactionPlan, int]]:
        """List the new base files in place of their inputs; drop a merge whose inputs changed meanwhile."""
        now = self._now()
        with self._state_lock:
            manifest = self._manifest
            tables = dict(manifest.tables)
            retired = list(manifest.retired)
            installed = []
            for plan, rows in merged:
                current = manifest.files(plan.table)
                if not set(plan.inputs) <= set(current):
                    # A full copy replaced the inputs while they were merged.
                    (self.folder / plan.output).unlink(missing_ok=True)
                    logger.info("Discarded the compaction of %s because a full copy replaced its files", plan.table)
                    continue
                remaining = tuple(f for f in current if f not in plan.inputs)
                tables[plan.table] = (SnapshotFile(plan.output, "base", rows, plan.max_change_seq),) + remaining
                retired.extend(RetiredFile(f.path, now) for f in plan.inputs)
                installed.append((plan, rows))

            if installed:
                updated = replace(
                    manifest,
                    generation=manifest.generation + 1,
                    next_file_number=self._next_file_number,
                    tables=tables,
                    retired=tuple(retired),
                )
                self._write_manifest(updated)
                self._manifest = updated
        return installed

    def delete_expired_files(self) -> int:
        """Delete the retired files whose grace period has passed; return how many were removed from the manifest."""
        now = self._now()
        with self._state_lock:
            manifest = self._manifest
            if manifest is None:
                return 0
            expired = [r for r in manifest.retired if _age_s(r.retired_at, now) >= self._settings.snapshot_grace_s]
            if not expired:
                return 0

            kept = tuple(r for r in manifest.retired if r not in expired)
            updated = replace(manifest, generation=manifest.generation + 1, retired=kept)
            try:
                self._write_manifest(updated)
            except OSError as error:
                raise SnapshotError(
                    f"Failed to write the snapshot manifest in {self.folder}: {error}. "
                    "Check free space and permissions; expired files are deleted later."
                ) from error
            self._manifest = updated

        # The manifest no longer lists these files, so a failed unlink leaves an orphan that
        # the next `open` deletes.
        for retired in expired:
            try:
                (self.folder / retired.path).unlink(missing_ok=True)
            except OSError as error:
                logger.warning("Failed to delete the expired snapshot file %s: %s", retired.path, error)
        logger.info(
            "Deleted %d snapshot file(s) replaced more than %.0f s ago", len(expired), self._settings.snapshot_grace_s
        )
        return len(expired)

    def start_compaction(self) -> None:
        """Start the background thread that compacts and deletes expired files; does nothing when it runs."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._compact_forever, name="snapshot-compaction", daemon=True)
        self._thread.start()

    def stop_compaction(self, timeout_s: float = 30.0) -> None:
        """Stop the background thread, interrupting a running merge, and wait up to `timeout_s` for it."""
        thread = self._thread
        if thread is None:
            return

        self._stop.set()
        self._wake.set()
        with self._state_lock:
            if self._compaction_connection is not None:
                try:
                    self._compaction_connection.interrupt()
                except duckdb.Error as error:
                    logger.warning("Failed to interrupt the running snapshot compaction: %s", error)
        thread.join(timeout_s)
        if thread.is_alive():
            # Kept, so that start_compaction does not start a second thread beside it.
            logger.warning("Snapshot compaction did not stop within %.0f s; it stops after its merge", timeout_s)
            return

        # Cleared, so that a later compact() call on another thread merges again.
        self._stop.clear()
        self._thread = None

    @property
    def compaction_running(self) -> bool:
        """Whether the background compaction thread runs; false after an unexpected error stopped it."""
        return self._thread is not None and self._thread.is_alive()

    def _compact_forever(self) -> None:
        try:
            self._compact_until_stopped()
        except Exception:
            logger.exception("Snapshot compaction stopped on an unexpected error; files accumulate until a restart")

    def _compact_until_stopped(self) -> None:
        logger.info(
            "Started snapshot compaction for %s: at %d delta files, keeping replaced files %.0f s",
            self.folder,
            self._settings.snapshot_compaction_deltas,
            self._settings.snapshot_grace_s,
        )
        failures = 0
        while not self._stop.is_set():
            # Cleared before the work, so that a publish that sets it meanwhile is not lost.
            self._wake.clear()
            try:
                self.compact()
                self.delete_expired_files()
                failures = 0
                wait_s = self._seconds_until_next_expiry()
            except SnapshotError as error:
                if self._stop.is_set():
                    break
                failures += 1
                wait_s = min(COMPACTION_RETRY_MAX_S, 2.0**failures)
                logger.error("Snapshot compaction failed (%d in a row); retrying in %.0f s: %s", failures, wait_s, error)
            self._wake.wait(wait_s)
        logger.info("Stopped snapshot compaction for %s", self.folder)

    def _seconds_until_next_expiry(self) -> float:
        with self._state_lock:
            manifest = self._manifest
        if manifest is None or not manifest.retired:
            return IDLE_CHECK_S
        now = self._now()
        remaining = min(self._settings.snapshot_grace_s - _age_s(r.retired_at, now) for r in manifest.retired)
        return min(IDLE_CHECK_S, max(remaining, 0.0))

    def close(self) -> None:
        """Stop compaction and release the folder's lock; a second call does nothing."""
        if self._closed:
            return
        self._closed = True
        self.stop_compaction()
        if not self.wait_for_rewrite(REWRITE_CLOSE_TIMEOUT_S):
            logger.warning(
                "The snapshot rewrite did not finish within %.0f s of close; the next start repeats it",
                REWRITE_CLOSE_TIMEOUT_S,
            )
        _unlock_folder(self._lock_file)
        logger.info("Closed the snapshot folder %s", self.folder)

    # -- files --------------------------------------------------------------------------------

    def _allocate_path(self, table: str, kind: FileKind) -> str:
        """Return a new file name; call with _state_lock held or before other threads start."""
        number = self._next_file_number
        self._next_file_number += 1
        return f"{table}/{kind}-{number:012d}.parquet"

    def _temp_path(self, table: str) -> Path:
        return self.folder / table / f"{TEMP_PREFIX}{uuid.uuid4().hex}{TEMP_SUFFIX}"

    def _write_manifest(self, manifest: Manifest) -> None:
        """Replace manifest.json atomically; raises OSError."""
        temp = self.folder / f"{TEMP_PREFIX}manifest-{uuid.uuid4().hex}{TEMP_SUFFIX}"
        try:
            with temp.open("w", encoding="utf-8") as handle:
                handle.write(manifest.to_json())
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, self.folder / MANIFEST_NAME)
        except OSError:
            temp.unlink(missing_ok=True)
            raise
        # The rename itself becomes durable only with the folder's fsync. Without it a crash
        # could bring back an older manifest whose retired files were already deleted.
        _fsync_directory(self.folder)

    def _check_listed_files(self) -> None:
        manifest = self._manifest
        if manifest is None:
            return
        missing = [f.path for table in TABLES for f in manifest.files(table) if not (self.folder / f.path).exists()]
        if missing:
            self._full_copy_reason = f"{len(missing)} listed file(s) are missing, for example {missing[0]}"
            logger.warning(
                "The snapshot in %s lists missing files (%s); the next publish copies everything again",
                self.folder,
                ", ".join(missing[:3]),
            )

    def _delete_unlisted_files(self) -> None:
        """Delete temporary files and files no manifest lists, left by a crash."""
        listed = self._manifest.referenced_paths() if self._manifest else set()
        candidates = [path for path in self.folder.iterdir() if path.is_file() and _is_temp_name(path.name)]
        for table in TABLES:
            candidates.extend(path for path in (self.folder / table).iterdir() if path.is_file())

        deleted = 0
        for path in candidates:
            relative = path.relative_to(self.folder).as_posix()
            if relative in listed:
                continue
            try:
                path.unlink(missing_ok=True)
                deleted += 1
            except OSError as error:
                logger.warning("Failed to delete the leftover snapshot file %s: %s", path, error)
        if deleted:
            logger.info("Deleted %d leftover snapshot file(s) in %s", deleted, self.folder)

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), tz=timezone.utc)


def _reason_for_full_copy(manifest: Manifest | None, latest: int, database: str) -> str | None:
    if manifest is None:
        return "the folder has no snapshot yet"
    if manifest.database != database:
        return f"the database changed from {manifest.database} to {database}"
    if latest < manifest.watermark:
        return (
            f"the database's change_seq {latest} is behind the snapshot's watermark "
            f"{manifest.watermark}, so the file was replaced or restored"
        )
    return None


def _in_explicit_transaction(connection: duckdb.DuckDBPyConnection) -> bool:
    """Return whether BEGIN was run on the connection without COMMIT or ROLLBACK yet.

    In autocommit mode each statement runs in a transaction of its own, so two statements
    see two transaction ids. Inside an explicit transaction they see the same one.
    """
    first = connection.execute("SELECT txid_current()").fetchall()[0][0]
    second = connection.execute("SELECT txid_current()").fetchall()[0][0]
    return first == second


def _latest_change_seq(connection: duckdb.DuckDBPyConnection) -> int | None:
    """Return the sequence's last value, 0 when unused, or None when the sequence is missing.

    Every committed row has a change_seq at or below it. DuckDB keeps the value in the file,
    so it survives a restart.
    """
    rows = connection.execute(
        "SELECT last_value FROM duckdb_sequences() WHERE database_name = current_database() AND sequence_name = ?",
        [CHANGE_SEQUENCE],
    ).fetchall()
    if not rows:
        return None
    return rows[0][0] or 0


def _database_path(connection: duckdb.DuckDBPyConnection) -> str:
    rows = connection.execute("SELECT path FROM duckdb_databases() WHERE database_name = current_database()").fetchall()
    return rows[0][0] if rows and rows[0][0] else ":memory:"


def _pin_read_transaction(connection: duckdb.DuckDBPyConnection) -> tuple[duckdb.DuckDBPyConnection, int]:
    """Open a read transaction on a new cursor of `connection`; return it with the sequence's last value.

    Call it on the writer's thread between transactions. DuckDB fixes a transaction's view
    of the database at its first read, not at BEGIN, so the SELECT pins it here.
    """
    cursor = connection.cursor()
    try:
        cursor.execute("BEGIN TRANSACTION")
        cursor.execute("SELECT 1 FROM feedback LIMIT 1").fetchall()
        latest = _latest_change_seq(cursor) or 0
    except duckdb.Error:
        cursor.close()
        raise
    return cursor, latest


def _copy_changes(connection: duckdb.DuckDBPyConnection, table: str, after: int, latest: int, temp: Path) -> int:
    """Copy the rows of `table` with `after` < change_seq <= `latest` into `temp`; return the row count.

    change_seq records inserts and updates only, so deletions reach the snapshot through
    the full rewrite that `SnapshotPublisher.request_rewrite` requests.
    """
    # `table` comes from TABLES, never from input, because a table name cannot be a parameter.
    columns = file_columns(table, connection.table(table).columns)
    rows = connection.execute(
        f"COPY (SELECT {columns} FROM {table} WHERE change_seq > ? AND change_seq <= ? "
        f"ORDER BY change_seq) TO ? ({PARQUET_OPTIONS})",
        [after, latest, str(temp)],
    ).fetchall()
    return int(rows[0][0])


def _rollback_quietly(connection: duckdb.DuckDBPyConnection) -> None:
    try:
        connection.execute("ROLLBACK")
    except duckdb.Error as error:
        logger.warning("Rollback of the snapshot's read transaction also failed: %s", error)


def _remove_quietly(paths) -> None:
    for path in paths:
        try:
            path.unlink(missing_ok=True)
        except OSError as error:
            logger.warning("Failed to delete the temporary snapshot file %s: %s", path, error)


def _fsync_file(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _is_temp_name(name: str) -> bool:
    return name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)


def _age_s(moment: datetime, now: datetime) -> float:
    return (now - moment).total_seconds()


def _lock_folder(folder: Path) -> IO[str]:
    path = folder / LOCK_NAME
    try:
        lock_file = path.open("a+", encoding="utf-8")
    except OSError as error:
        raise SnapshotError(f"Failed to open the lock file {path}: {error}. Check the folder's permissions.") from error

    try:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as error:
        lock_file.seek(0)
        holder = lock_file.read().strip() or "unknown"
        lock_file.close()
        raise SnapshotError(
            f"Another process (pid {holder}) publishes snapshots to {folder}. Persistence must run "
            "as one replica; stop the other process or give this one its own snapshot_dir."
        ) from error

    lock_file.seek(0)
    lock_file.truncate()
    lock_file.write(str(os.getpid()))
    lock_file.flush()
    return lock_file


def _unlock_folder(lock_file: IO[str]) -> None:
    try:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)
    finally:
        lock_file.close()
