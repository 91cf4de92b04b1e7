"""Measure snapshot publishing, compaction and snapshot queries on a large synthetic database.

    .venv/bin/python -m bench.snapshot_scale              # 10 million rows, writes docs/snapshot-benchmark.md
                                                          # (28 minutes on a shared 2-core machine)
    .venv/bin/python -m bench.snapshot_scale --quick      # 200,000 rows, writes build/bench/snapshot-benchmark-quick.md
    .venv/bin/python -m bench.snapshot_scale --rows 1000000 --keep

Steps, in one process:

1. Create a DuckDB file with `FeedbackStore.open`, so it has the real schema, and fill
   `feedback` and `outbox` in SQL chunks (`bench.snapshot_scale_data`).
2. Publish a full snapshot with `SnapshotPublisher` and wait for its background copy; the
   time covers both, and `writer_held_s` is the part that held the writer. Then apply
   `DELTA_COUNT` rounds of changes as the service makes them in one publish interval, and
   publish a delta after each. Add one round of updates to old rows spread over the whole table, and one
   publish with nothing changed.
3. Compact all files into new base files with `SnapshotPublisher.compact(force=True)`, the
   method that the compaction thread of `start_compaction` calls, with the default
   compaction settings (one DuckDB thread, `snapshot_compaction_memory_mib`).
4. Open the snapshot with `feedbackbot.analysis.connect` and time each query of `QUERIES`
   and `REFERENCE_QUERIES`: one warm-up run, then the median of `--query-runs` runs.
5. Write the results as Markdown (`bench.snapshot_scale_report`) and as JSON under
   build/bench/.

Everything is written to a new folder from `tempfile.mkdtemp`, which is deleted at the end
unless `--keep` is given. The DuckDB connections are limited to `--threads` threads and
`--memory-limit` of memory, because the benchmark shares the machine with other work.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import psutil

from bench import snapshot_scale_data as data
from bench import snapshot_scale_report as report
from bench.snapshot_scale_files import base_files, column_sizes, compare_text_compression, snapshot_sizes
from feedbackbot import analysis
from feedbackbot.errors import FeedbackbotError
from feedbackbot.settings import EnrichmentRetrySettings
from feedbackbot.snapshot_settings import SnapshotSettings
from feedbackbot.snapshots import OMITTED_COLUMNS, TABLES, SnapshotPublisher
from feedbackbot.store import FeedbackStore

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REPORT = PROJECT_ROOT / "docs" / "snapshot-benchmark.md"
QUICK_REPORT = PROJECT_ROOT / "build" / "bench" / "snapshot-benchmark-quick.md"
RESULTS_DIR = PROJECT_ROOT / "build" / "bench"
# The results of the run behind DEFAULT_REPORT, kept in git so that `make bench` can
# summarise them in docs/benchmarks.md.
DEFAULT_RESULTS = PROJECT_ROOT / "docs" / "snapshot-benchmark.json"

FULL_ROWS = 10_000_000
QUICK_ROWS = 200_000
MIN_ROWS = 10_000
CHUNK_ROWS = 500_000
# New rows per delta: one publish interval (5 s by default) at 1,000 submissions per
# second, a chosen rate that no measurement of the service backs.
DELTA_ROWS = 5_000
DELTA_COUNT = 5
# Maximum wait for the background full copy. 10 million rows took 34 s in docs/snapshot-benchmark.md.
FULL_COPY_TIMEOUT_S = 3600.0
# Rows scored late per delta: one look of the enrichment retry.
LATE_SCORED_ROWS = EnrichmentRetrySettings().enrichment_retry_batch_size
REQUEUED_ENTRIES = 100
# Free disk per row that a run requires. Runs with 1 and 10 million rows needed about 0.86 KB
# per row for the DuckDB file and the snapshot folder at its peak. The rest is room for
# DuckDB's spill files, which were not measured.
DISK_BYTES_PER_ROW = 2_000

SEARCH_TERM = "refund"
QUERIES = (
    (
        "Count by UTC day and sentiment",
        "SELECT CAST(timezone('UTC', received_at) AS DATE) AS day, sentiment_label, count(*) AS feedback "
        "FROM feedback GROUP BY ALL ORDER BY ALL",
    ),
    (
        f"Text search: count of ILIKE '%{SEARCH_TERM}%'",
        f"SELECT count(*) FROM feedback WHERE feedback_text ILIKE '%{SEARCH_TERM}%'",
    ),
    (
        f"Text search: 20 newest matches of ILIKE '%{SEARCH_TERM}%'",
        f"SELECT id, received_at, rating, sentiment_label, feedback_text FROM feedback "
        f"WHERE feedback_text ILIKE '%{SEARCH_TERM}%' ORDER BY received_at DESC LIMIT 20",
    ),
    ("feedback_daily view, all days", "SELECT * FROM feedback_daily"),
)
# Queries on `feedback_file`, the compacted base file read directly, without the window of
# the `feedback` view that keeps the newest version of each id. After compaction each id is
# in the file once, so the result is the same and the time difference is the window's cost.
REFERENCE_QUERIES = (
    (
        f"Text search: count of ILIKE '%{SEARCH_TERM}%', on the file without the view",
        f"SELECT count(*) FROM feedback_file WHERE feedback_text ILIKE '%{SEARCH_TERM}%'",
    ),
)


class BenchmarkError(Exception):
    """The benchmark cannot run with these options on this machine."""


@dataclass
class Progress:
    """Printer of progress lines, each with the seconds since the run started."""

    started: float = field(default_factory=time.monotonic)

    def say(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:7.1f} s] {message}", flush=True)


@dataclass
class PhaseUse:
    """Wall time and CPU use of one phase. `other_cores` is the mean CPU use of other processes, in cores."""

    wall_s: float = 0.0
    cpu_s: float = 0.0
    other_cores: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {"wall_s": self.wall_s, "cpu_s": self.cpu_s, "other_cores": self.other_cores}


@contextmanager
def measure() -> Iterator[PhaseUse]:
    """Measure the block's wall time, this process's CPU time and the other processes' CPU use.

    `other_cores` is the machine's busy CPU time (from /proc/stat through psutil) minus this
    process's, per second of wall time. It shows how much the other work on the machine
    competed with the phase.
    """
    process = psutil.Process()
    use = PhaseUse()
    machine_before = _busy_cpu_s()
    own_before = _own_cpu_s(process)
    started = time.perf_counter()
    try:
        yield use
    finally:
        use.wall_s = time.perf_counter() - started
        use.cpu_s = _own_cpu_s(process) - own_before
        other_s = _busy_cpu_s() - machine_before - use.cpu_s
        use.other_cores = max(other_s, 0.0) / use.wall_s if use.wall_s > 0 else 0.0


def _busy_cpu_s() -> float:
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def _own_cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


# -- command line ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.snapshot_scale",
        description="Fill a DuckDB file with synthetic feedback, publish and compact Parquet snapshots, "
        "time queries on them, and write the results as Markdown.",
    )
    parser.add_argument(
        "--rows",
        type=int,
        default=None,
        help=f"Feedback rows to generate (default {FULL_ROWS:,}; at least {MIN_ROWS:,}).",
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"Generate {QUICK_ROWS:,} rows and write the report under build/bench/."
    )
    parser.add_argument("--keep", action="store_true", help="Keep the database and snapshot files after the run.")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="Empty or new folder for the database and snapshots (default: a new folder from tempfile.mkdtemp).",
    )
    parser.add_argument(
        "--threads", type=int, default=2, help="DuckDB threads of the writer and query connections (default 2)."
    )
    parser.add_argument(
        "--memory-limit",
        default="4GB",
        help="DuckDB memory_limit of the writer and query connections, in DuckDB's notation (default 4GB).",
    )
    parser.add_argument(
        "--query-runs", type=int, default=5, help="Timed runs of each query after one warm-up run (default 5)."
    )
    parser.add_argument(
        "--from-results",
        type=Path,
        default=None,
        help="Write the report from the JSON results of an earlier run, which bench.snapshot_scale saves under "
        "build/bench/, instead of running the benchmark.",
    )
    parser.add_argument(
        "--report",
        type=Path,
        default=None,
        help=f"Markdown file to write (default {DEFAULT_REPORT.relative_to(PROJECT_ROOT)}, "
        f"or {QUICK_REPORT.relative_to(PROJECT_ROOT)} with --quick).",
    )
    args = parser.parse_args(argv)

    if args.rows is None:
        args.rows = QUICK_ROWS if args.quick else FULL_ROWS
    if args.rows < MIN_ROWS:
        parser.error(
            f"--rows {args.rows} is too small: use at least {MIN_ROWS:,}, so that the deltas have old rows to change."
        )
    if args.threads < 1:
        parser.error(f"--threads {args.threads} is invalid: use 1 or more.")
    if args.query_runs < 1:
        parser.error(f"--query-runs {args.query_runs} is invalid: use 1 or more.")
    if args.report is None:
        args.report = QUICK_REPORT if args.quick else DEFAULT_REPORT
    args.command = " ".join(["python -m bench.snapshot_scale", *(sys.argv[1:] if argv is None else argv)])
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    progress = Progress()

    if args.from_results is not None:
        return _render_saved(args.from_results, args.report, progress)

    try:
        work_dir = _prepare_work_dir(args.work_dir, args.rows)
    except BenchmarkError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    progress.say(f"Working in {work_dir} with {args.rows:,} rows")
    try:
        results = run(args, work_dir, progress)
    except (BenchmarkError, FeedbackbotError, duckdb.Error, OSError, ValueError) as error:
        print(f"error: the benchmark failed: {error}", file=sys.stderr)
        return 1
    finally:
        _clean_up(work_dir, keep=args.keep, progress=progress)

    results_path = _write_results(results, args.report)
    progress.say(f"Wrote {args.report} and {results_path}")
    return 0


def _render_saved(results_path: Path, report_path: Path, progress: Progress) -> int:
    try:
        results = json.loads(results_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        print(f"error: failed to read the results {results_path}: {error}", file=sys.stderr)
        return 2

    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(report.render(results), encoding="utf-8")
    if report_path == DEFAULT_REPORT:
        DEFAULT_RESULTS.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    progress.say(f"Wrote {report_path} from {results_path}")
    return 0


def _prepare_work_dir(requested: Path | None, rows: int) -> Path:
    """Return an empty folder for the run, checking that its file system has room for `rows` rows."""
    if requested is None:
        work_dir = Path(tempfile.mkdtemp(prefix="feedbackbot-bench-"))
    else:
        work_dir = requested.expanduser().absolute()
        if work_dir.exists() and any(work_dir.iterdir()):
            raise BenchmarkError(f"--work-dir {work_dir} is not empty; pass an empty or new folder.")
        work_dir.mkdir(parents=True, exist_ok=True)

    needed = rows * DISK_BYTES_PER_ROW
    free = shutil.disk_usage(work_dir).free
    if free < needed:
        shutil.rmtree(work_dir, ignore_errors=True)
        raise BenchmarkError(
            f"{work_dir} has {free / 2**30:.1f} GiB free, but {rows:,} rows need up to {needed / 2**30:.1f} GiB. "
            "Pass --work-dir on a larger file system or lower --rows."
        )
    return work_dir


def _clean_up(work_dir: Path, *, keep: bool, progress: Progress) -> None:
    if keep:
        progress.say(f"Kept the database and snapshots in {work_dir} (--keep)")
        return
    shutil.rmtree(work_dir, ignore_errors=True)
    progress.say(f"Deleted {work_dir}")


def _write_results(results: dict[str, Any], report_path: Path) -> Path:
    """Write the Markdown report and the raw results as JSON, and return the JSON path."""
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(report.render(results), encoding="utf-8")

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = results["started_at"].replace(":", "").replace("-", "")[:15]
    results_path = RESULTS_DIR / f"snapshot-scale-{stamp}.json"
    results_path.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    if report_path == DEFAULT_REPORT:
        DEFAULT_RESULTS.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    return results_path


# -- the run ----------------------------------------------------------------------------------


def run(args: argparse.Namespace, work_dir: Path, progress: Progress) -> dict[str, Any]:
    """Run every step and return the results that `bench.snapshot_scale_report.render` reads."""
    started = time.monotonic()
    results: dict[str, Any] = {
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": args.command,
        "rows": args.rows,
        "settings": {
            "threads": args.threads,
            "memory_limit": args.memory_limit,
            "chunk_rows": CHUNK_ROWS,
            "delta_rows": DELTA_ROWS,
            "delta_count": DELTA_COUNT,
            "late_scored_rows": LATE_SCORED_ROWS,
            "requeued_entries": REQUEUED_ENTRIES,
            "query_runs": args.query_runs,
            "compaction_memory_mib": SnapshotSettings().snapshot_compaction_memory_mib,
            "omitted_columns": {table: list(columns) for table, columns in OMITTED_COLUMNS.items()},
        },
        "machine": report.machine_info(),
        "versions": report.versions(),
        "loadavg_start": os.getloadavg(),
    }
    vocabulary = data.load_vocabulary()
    database_path = work_dir / "feedback.duckdb"
    snapshot_dir = work_dir / "snapshots"
    spill_dir = work_dir / "spill"

    connection = _open_writer(database_path, spill_dir, args)
    try:
        generator = data.RowGenerator(connection, vocabulary, planned_rows=args.rows)
        results["data"] = fill_database(connection, generator, args.rows, progress)
        results["data"]["duckdb_bytes"] = _database_bytes(database_path)
        progress.say(f"DuckDB file: {results['data']['duckdb_bytes'] / 2**30:.2f} GiB")

        store = FeedbackStore(connection, database_path)
        settings = SnapshotSettings(snapshot_dir=str(snapshot_dir), snapshot_grace_s=0)
        publisher = SnapshotPublisher.open(settings)
        try:
            results.update(publish_and_compact(store, connection, generator, publisher, args.rows, progress))
        finally:
            publisher.close()
    finally:
        connection.close()

    results["text_calibration"] = compare_text_compression(snapshot_dir, vocabulary)
    results["columns"] = column_sizes(snapshot_dir)
    results["connect_s"], results["queries"] = time_queries(snapshot_dir, spill_dir, args, progress)

    results["loadavg_end"] = os.getloadavg()
    results["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    results["total_s"] = time.monotonic() - started
    return results


def _open_writer(database_path: Path, spill_dir: Path, args: argparse.Namespace) -> duckdb.DuckDBPyConnection:
    """Create the database with FeedbackStore's schema, then open it with the benchmark's limits.

    FeedbackStore.open takes no DuckDB settings, so the file is opened once by it, for the
    schema, and then again with `threads`, `memory_limit` and a spill folder inside the
    work folder.
    """
    FeedbackStore.open(database_path).close()

    config = {"threads": args.threads, "memory_limit": args.memory_limit, "temp_directory": str(spill_dir)}
    try:
        connection = duckdb.connect(str(database_path), config=config)
    except duckdb.Error as error:
        raise BenchmarkError(
            f"Failed to open {database_path} with threads={args.threads}, memory_limit={args.memory_limit}: {error}"
        ) from error
    connection.execute("SET TimeZone = 'UTC'")
    return connection


def fill_database(
    connection: duckdb.DuckDBPyConnection, generator: data.RowGenerator, rows: int, progress: Progress
) -> dict[str, Any]:
    """Insert `rows` feedback rows with their outbox entries in chunks, and return counts and timings."""
    pending_from = max(rows - data.PENDING_ROWS, 0)

    progress.say(f"Generating {rows:,} feedback rows with their outbox entries, {CHUNK_ROWS:,} rows per transaction")
    with measure() as use:
        fill_started = time.perf_counter()
        for first in range(0, rows, CHUNK_ROWS):
            end = min(first + CHUNK_ROWS, rows)
            generator.insert_rows(first, end, pending_from=pending_from)
            elapsed = time.perf_counter() - fill_started
            progress.say(f"  {end:>12,} of {rows:,} rows ({end / elapsed:,.0f} rows/s)")
        connection.execute("CHECKPOINT")

    stats = connection.execute(
        f"""
        SELECT
            count(*),
            avg(length(feedback_text)),
            avg(CASE WHEN sentiment_label IS NULL THEN 1 ELSE 0 END),
            avg(CASE WHEN feedback_text ILIKE '%{SEARCH_TERM}%' THEN 1 ELSE 0 END),
            min(received_at),
            max(received_at)
        FROM feedback
        """
    ).fetchone()
    outbox_rows = connection.execute("SELECT count(*) FROM outbox").fetchone()[0]
    progress.say(
        f"Generated {stats[0]:,} feedback rows and {outbox_rows:,} outbox entries in {use.wall_s:.0f} s "
        f"({stats[0] / use.wall_s:,.0f} feedback rows/s)"
    )
    return {
        "feedback_rows": stats[0],
        "outbox_rows": outbox_rows,
        "mean_text_chars": stats[1],
        "without_sentiment_share": stats[2],
        "search_match_share": stats[3],
        "first_received_at": stats[4].isoformat(),
        "last_received_at": stats[5].isoformat(),
        "generation": use.as_dict(),
    }


def _database_bytes(database_path: Path) -> int:
    wal = database_path.with_name(database_path.name + ".wal")
    return database_path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def publish_and_compact(
    store: FeedbackStore,
    connection: duckdb.DuckDBPyConnection,
    generator: data.RowGenerator,
    publisher: SnapshotPublisher,
    rows: int,
    progress: Progress,
) -> dict[str, Any]:
    """Publish a full copy, then deltas after changes, then compact, and return timings and sizes."""
    folder = publisher.folder
    progress.say("Publishing the full snapshot")
    with measure() as use:
        full = store.publish_snapshot(publisher)
        # A large full copy runs on the publisher's own thread, so the writer's thread is
        # held only for full.duration_s.
        finished = publisher.wait_for_rewrite(FULL_COPY_TIMEOUT_S)
    if not finished or publisher.rewrite_error:
        raise BenchmarkError(
            f"The full snapshot copy did not finish within {FULL_COPY_TIMEOUT_S:.0f} s: "
            f"{publisher.rewrite_error or 'still running'}"
        )
    sizes = {"after_full_publish": snapshot_sizes(folder, publisher.manifest)}
    progress.say(
        f"Full publish: {use.wall_s:.1f} s, writer's thread held {full.duration_s * 1000:.0f} ms, "
        f"{sizes['after_full_publish']['listed_total'] / 2**30:.2f} GiB"
    )
    copied = {table: sum(f.rows for f in publisher.manifest.files(table)) for table in TABLES}
    full_publish = {
        "duration_s": use.wall_s,
        "writer_held_s": full.duration_s,
        "in_background": full.full_copy_running,
        "rows": copied,
        "use": use.as_dict(),
    }

    deltas = []
    for round_number in range(DELTA_COUNT):
        first_row = rows + round_number * DELTA_ROWS
        changes = _regular_changes(connection, generator, first_row)
        deltas.append(_publish_after(store, publisher, "regular", changes, progress))
    deltas.append(_publish_after(store, publisher, "scattered", _scattered_changes(connection), progress))
    deltas.append(_publish_after(store, publisher, "unchanged", {}, progress))
    sizes["before_compaction"] = snapshot_sizes(folder, publisher.manifest)

    progress.say("Compacting all snapshot files (one DuckDB thread, as the compaction thread runs it)")
    with measure() as use:
        compaction = publisher.compact(force=True)
    sizes["after_compaction"] = snapshot_sizes(folder, publisher.manifest)
    progress.say(
        f"Compaction: {compaction.duration_s:.1f} s, {len(compaction.retired)} files into {len(compaction.files)}"
    )

    # snapshot_grace_s is 0, so the replaced files expire at once.
    publisher.delete_expired_files()
    sizes["after_expiry"] = snapshot_sizes(folder, publisher.manifest)

    return {
        "full_publish": full_publish,
        "deltas": deltas,
        "compaction": {
            "duration_s": compaction.duration_s,
            "rows": dict(compaction.rows),
            "inputs": len(compaction.retired),
            "outputs": len(compaction.files),
            "use": use.as_dict(),
        },
        "sizes": sizes,
    }


def _publish_after(
    store: FeedbackStore, publisher: SnapshotPublisher, kind: str, changes: dict[str, int], progress: Progress
) -> dict[str, Any]:
    """Publish the changes made just before, and return them with the publish's duration and row counts."""
    with measure() as use:
        published = store.publish_snapshot(publisher)
    progress.say(
        f"Delta publish ({kind}): {published.duration_s * 1000:.0f} ms for {dict(published.rows)} changed rows"
    )
    return {
        "kind": kind,
        "changes": changes,
        "duration_s": published.duration_s,
        "rows": dict(published.rows),
        "files": list(published.files),
        "use": use.as_dict(),
    }


def _regular_changes(
    connection: duckdb.DuckDBPyConnection, generator: data.RowGenerator, first_row: int
) -> dict[str, int]:
    """Make the changes of one publish interval: new rows, sent notifications and late scores."""
    generator.insert_rows(first_row, first_row + DELTA_ROWS, pending_from=first_row)
    return {
        "inserted_feedback": DELTA_ROWS,
        "sent_entries": data.send_pending(connection, DELTA_ROWS),
        "late_scored": data.score_pending(connection, LATE_SCORED_ROWS),
    }


def _scattered_changes(connection: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Requeue dead outbox entries from every age, so the delta has to read old row groups."""
    return {"requeued_entries": data.requeue_dead(connection, REQUEUED_ENTRIES)}


def time_queries(
    snapshot_dir: Path, spill_dir: Path, args: argparse.Namespace, progress: Progress
) -> tuple[float, list[dict[str, Any]]]:
    """Open the snapshot with analysis.connect, time each query, and return the connect time and the timings."""
    started = time.perf_counter()
    connection = analysis.connect(snapshot_dir)
    connect_s = time.perf_counter() - started

    try:
        # analysis.connect uses DuckDB's defaults: all cores, 80 % of memory and a spill
        # folder under the working directory.
        connection.execute(f"SET threads = {args.threads}")
        connection.execute("SET memory_limit = ?", [args.memory_limit])
        connection.execute("SET temp_directory = ?", [str(spill_dir)])
        connection.read_parquet(base_files(snapshot_dir, "feedback")).create_view("feedback_file")

        timings = []
        queries = [(name, sql, False) for name, sql in QUERIES]
        queries += [(name, sql, True) for name, sql in REFERENCE_QUERIES]
        for name, sql, reference in queries:
            progress.say(f"Query: {name} (1 warm-up and {args.query_runs} timed runs)")
            connection.execute(sql).fetchall()
            durations = []
            with measure() as use:
                for _ in range(args.query_runs):
                    query_started = time.perf_counter()
                    result = connection.execute(sql).fetchall()
                    durations.append(time.perf_counter() - query_started)
            timings.append(
                {
                    "name": name,
                    "sql": sql,
                    "reference": reference,
                    "median_s": statistics.median(durations),
                    "min_s": min(durations),
                    "max_s": max(durations),
                    "result_rows": len(result),
                    "first_value": result[0][0] if len(result) == 1 and len(result[0]) == 1 else None,
                    "use": use.as_dict(),
                }
            )
            progress.say(f"  median {statistics.median(durations):.2f} s, {len(result)} result rows")
    finally:
        connection.close()
    return connect_s, timings


if __name__ == "__main__":
    sys.exit(main())
