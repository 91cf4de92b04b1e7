"""Render the results of `bench.snapshot_scale` as Markdown, and describe the machine.

Every number on the page comes from the results dictionary of one run.
"""

from __future__ import annotations

import os
import platform
import statistics
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import psutil

SIZE_TARGET_BYTES = int(1.5 * 2**30)
SIZE_TARGET_ROWS = 10_000_000
PACKAGES = ("duckdb", "psutil", "pydantic")


def machine_info() -> dict[str, Any]:
    """Return the usable core count, total memory, CPU model and kernel release."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass  # Not Linux: the model stays unknown.

    return {
        "nproc": len(os.sched_getaffinity(0)),
        "memory_bytes": psutil.virtual_memory().total,
        "cpu_model": model,
        "kernel": platform.release(),
    }


def versions() -> dict[str, str]:
    """Return the versions of Python and of the packages that the benchmark measures."""
    found = {"Python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


def render(results: dict[str, Any]) -> str:
    """Return the Markdown page for one run."""
    sections = [
        _header(results),
        _targets(results),
        _machine(results),
        _method(results),
        _generation(results),
        _publishing(results),
        _sizes(results),
        _columns(results),
        _queries(results),
        _not_measured(results),
    ]
    return "\n".join(line for section in sections for line in section)


# -- sections ---------------------------------------------------------------------------------


def _header(results: dict[str, Any]) -> list[str]:
    return [
        "# Snapshot scale benchmark",
        "",
        "How long `SnapshotPublisher` takes to publish and compact Parquet snapshots of a large feedback "
        "database, how large the snapshot files are, and how fast `feedbackbot.analysis` queries them. "
        f"Written by `{results['command']}` (bench/snapshot_scale.py), which started at "
        f"{results['started_at']} and ran for {results['total_s'] / 60:.1f} minutes.",
        "",
    ]


def _targets(results: dict[str, Any]) -> list[str]:
    estimate = size_estimate(results)
    rows = estimate["snapshot_rows"]
    margin = SIZE_TARGET_BYTES - estimate["at_target_rows"]
    if estimate["measured"]:
        basis = (
            f"This is the size measured with {rows:,} feedback rows in the snapshot, scaled to "
            f"{SIZE_TARGET_ROWS:,} rows."
        )
    else:
        basis = (
            f"This is an estimate, scaled linearly from {_gib(estimate['size'])} with {rows:,} feedback rows, "
            "so run without `--rows` or `--quick` to measure it."
        )

    lines = ["## Targets", ""]
    lines.append(
        f"- **Snapshot size under 1.5 GiB for 10 million rows: {'met' if margin >= 0 else 'not met'}.** For 10 "
        f"million rows, the files that the manifest lists after compaction take {_gib(estimate['at_target_rows'])}, "
        f"{abs(margin) / 2**30:.2f} GiB ({abs(margin) / SIZE_TARGET_BYTES:.0%} of the target) "
        f"{'below' if margin >= 0 else 'above'} it. {basis}"
    )
    lines.append(
        f"- The size depends mostly on the text length. The compacted files take {estimate['other_per_row']:.0f} "
        f"bytes per feedback row without its text, outbox entries included, plus {estimate['per_char']:.2f} bytes "
        f"per text character. The generated texts average {results['data']['mean_text_chars']:.0f} characters, "
        f"while the hand-written samples in datasets/feedback_samples.csv average "
        f"{results['text_calibration']['sample_mean_chars']:.0f}. With that mean, 10 million rows would take "
        f"{_gib(estimate['at_sample_length'])}, and the target holds up to a mean of "
        f"{estimate['max_mean_chars']:.0f} characters (estimates that assume the size grows linearly with the "
        "text length)."
    )
    lines.append(
        f"- Right after compaction the folder held {_gib(results['sizes']['after_compaction']['disk_total'])}, "
        "because the replaced files stay for `snapshot_grace_s`, 1 hour by default. This run set it to 0 s, so they "
        "were deleted after the measurement. Plan disk space for that peak, not for the snapshot alone."
    )
    lines.append(
        "- **Ingest throughput while publishing at full speed drops by no more than 10 %: measured by `make bench`.** "
        "That needs the running service under load, so section 5 of docs/benchmarks.md measures it."
    )
    return lines + [""]


def size_estimate(results: dict[str, Any]) -> dict[str, Any]:
    """Scale the compacted snapshot's size to SIZE_TARGET_ROWS rows and split it into text and the rest."""
    size = results["sizes"]["after_compaction"]["listed_total"]
    snapshot_rows = results["compaction"]["rows"]["feedback"]
    text_bytes = next(
        column["compressed"] for column in results["columns"]["feedback"] if column["column"] == "feedback_text"
    )
    calibration = results["text_calibration"]

    per_char = text_bytes / calibration["text_chars"]
    other_per_row = (size - text_bytes) / snapshot_rows
    return {
        "size": size,
        "snapshot_rows": snapshot_rows,
        # Within 1 % of the target's row count, the size counts as measured rather than estimated.
        "measured": abs(snapshot_rows - SIZE_TARGET_ROWS) <= SIZE_TARGET_ROWS // 100,
        "at_target_rows": size / snapshot_rows * SIZE_TARGET_ROWS,
        "per_char": per_char,
        "other_per_row": other_per_row,
        "at_sample_length": SIZE_TARGET_ROWS * (other_per_row + per_char * calibration["sample_mean_chars"]),
        "max_mean_chars": (SIZE_TARGET_BYTES / SIZE_TARGET_ROWS - other_per_row) / per_char,
    }


def _machine(results: dict[str, Any]) -> list[str]:
    machine = results["machine"]
    versions_found = results["versions"]
    phases = _phase_uses(results)
    other = [use["other_cores"] for use in phases]
    rows = [
        ["CPU", machine["cpu_model"]],
        ["Cores (nproc)", str(machine["nproc"])],
        ["Memory", _gib(machine["memory_bytes"])],
        ["Kernel", machine["kernel"]],
        ["Python", versions_found["Python"]],
        ["duckdb", versions_found["duckdb"]],
        ["Load average at start (1, 5, 15 min)", _loads(results["loadavg_start"])],
        ["Load average at end (1, 5, 15 min)", _loads(results["loadavg_end"])],
        [
            "CPU use of other processes during the measured steps",
            f"{min(other):.2f} to {max(other):.2f} cores, median {statistics.median(other):.2f}",
        ],
        ["Peak memory (RSS) of the benchmark process", _gib(results["peak_rss_bytes"])],
    ]
    lines = ["## Machine", ""] + _table(["", ""], rows)
    lines.append(
        "Where other processes ran on the machine during a step, its time includes waiting for the CPU. "
        "*Other cores* is the machine's busy CPU time (from /proc/stat) minus this process's, per second "
        "of wall time. A value of 1.0 means that other work kept one core busy on average. *CPU time* is "
        "the benchmark process's user and system time, which depends less on that competition than wall time."
    )
    return lines + [""]


def _method(results: dict[str, Any]) -> list[str]:
    settings = results["settings"]
    generated = results["data"]
    return [
        "## Method",
        "",
        "- **Database.** A new DuckDB file gets its schema from `FeedbackStore.open` (schema version 2, with "
        "`change_seq`). `bench/snapshot_scale_data.py` then fills it in SQL, "
        f"{settings['chunk_rows']:,} rows per transaction. It wrote {generated['feedback_rows']:,} feedback rows "
        f"received from {generated['first_received_at'][:10]} to {generated['last_received_at'][:10]}, and "
        f"{generated['outbox_rows']:,} outbox entries: a confirmation per row and an admin alert per rating 1-2 "
        "or negative label. Every row takes its `change_seq` from the `change_seq` sequence.",
        "- **Values.** Ratings are J-shaped. The label follows the rating for 80 % of rows and is drawn at random "
        f"for the rest, and {generated['without_sentiment_share']:.1%} of rows have no sentiment. A text has a "
        f"uniform length of 20-400 characters (mean {generated['mean_text_chars']:.0f}). Its words are drawn at "
        "random with their frequencies in the hand-written samples of datasets/feedback_samples.csv that have "
        f"ratings of the same sentiment, and {generated['search_match_share']:.1%} of the texts contain "
        '"refund".',
        f"- **DuckDB settings.** The writer and query connections run with threads={settings['threads']} and "
        f"memory_limit={settings['memory_limit']}. Compaction uses the connection that the publisher opens: "
        f"one thread and {settings['compaction_memory_mib']} MiB (`snapshot_compaction_memory_mib`).",
        "- **Publishing.** `FeedbackStore.publish_snapshot` runs on the writer's connection, as in the persistence "
        f"deployment. The first publish is a full copy. Then come {settings['delta_count']} deltas, each after "
        f"{settings['delta_rows']:,} new rows with their outbox entries, {settings['delta_rows']:,} pending "
        f"entries marked sent and up to {settings['late_scored_rows']} rows scored late. One more delta follows "
        f"after {settings['requeued_entries']} dead entries from all 90 days were requeued, so that the publish "
        "has to read old row groups. The last publish finds nothing changed. Times are the publisher's own "
        "`PublishReport.duration_s`, which covers the copy, fsync, renames and the manifest write.",
        "- **Compaction.** `SnapshotPublisher.compact(force=True)` merges the base and all deltas of each table "
        "into one new base. The compaction thread of `start_compaction` calls the same method. Here it runs on "
        "the benchmark's main thread, so that its duration can be read from the `CompactionReport`.",
        "- **Sizes.** Bytes of the files that the manifest lists, per table, and of the whole snapshot folder "
        f"including retired files. The DuckDB size is that of the file after a `CHECKPOINT`.{_omitted(settings)}",
        "- **Queries.** `feedbackbot.analysis.connect()` opens the compacted snapshot, one base file per table, "
        "which its views read without a window, because each row is in the file once. Queries between two "
        "compactions also pass the rows that changed since through a window, which these times do not include. "
        "Each query runs once to warm up and then "
        f"{settings['query_runs']} times. The table shows the median, minimum and maximum wall time, including "
        "fetching the result into Python.",
        "",
    ]


def _omitted(settings: dict[str, Any]) -> str:
    """Return the sentence that names the database columns the snapshot files leave out, or "" when none."""
    # Results written before the snapshots left columns out have no "omitted_columns".
    omitted = [f"`{table}.{column}`" for table, columns in settings.get("omitted_columns", {}).items() for column in columns]
    if not omitted:
        return ""
    named = omitted[0] if len(omitted) == 1 else f"{', '.join(omitted[:-1])} and {omitted[-1]}"
    return f" The snapshot files leave out {named}, which the DuckDB file keeps."


def _generation(results: dict[str, Any]) -> list[str]:
    generated = results["data"]
    use = generated["generation"]
    rows = [
        ["Feedback rows", f"{generated['feedback_rows']:,}"],
        ["Outbox entries", f"{generated['outbox_rows']:,}"],
        [
            "Generation time",
            f"{use['wall_s']:.0f} s ({generated['feedback_rows'] / use['wall_s']:,.0f} feedback rows/s)",
        ],
        ["CPU time of the benchmark process", f"{use['cpu_s']:.0f} s"],
        ["Other cores during generation", f"{use['other_cores']:.2f}"],
        ["DuckDB file after CHECKPOINT", _gib(generated["duckdb_bytes"])],
    ]
    return ["## Results", "", "### Synthetic data", ""] + _table(["", ""], rows)


def _publishing(results: dict[str, Any]) -> list[str]:
    full = results["full_publish"]
    rows = [
        [
            "Full copy",
            _rows(full["rows"]),
            _seconds(full["duration_s"]),
            _seconds(full["use"]["cpu_s"]),
            f"{full['use']['other_cores']:.2f}",
        ]
    ]
    regular = 0
    for delta in results["deltas"]:
        if delta["kind"] == "regular":
            regular += 1
            step = f"Delta {regular}: new rows, sent entries, late scores"
        elif delta["kind"] == "scattered":
            step = "Delta: requeued dead entries from all ages"
        else:
            step = "Publish with nothing changed"
        use = delta["use"]
        rows.append(
            [step, _rows(delta["rows"]), _seconds(delta["duration_s"]), _seconds(use["cpu_s"]), f"{use['other_cores']:.2f}"]
        )

    compaction = results["compaction"]
    rows.append(
        [
            f"Compaction of {compaction['inputs']} files into {compaction['outputs']}",
            _rows(compaction["rows"]),
            _seconds(compaction["duration_s"]),
            _seconds(compaction["use"]["cpu_s"]),
            f"{compaction['use']['other_cores']:.2f}",
        ]
    )
    regular_times = [delta["duration_s"] for delta in results["deltas"] if delta["kind"] == "regular"]
    lines = ["### Publishing and compaction", ""]
    lines += _table(["step", "rows written (feedback / outbox)", "time", "CPU time", "other cores"], rows)
    lines.append(
        f"The regular deltas took {_seconds(min(regular_times))} to {_seconds(max(regular_times))} "
        f"(median {_seconds(statistics.median(regular_times))}), on the writer's thread."
    )
    if full.get("in_background"):
        lines.append(
            f"The full copy ran on a thread of its own and held the writer's thread for "
            f"{_seconds(full['writer_held_s'])}, so commits went on while it copied. Such a copy happens on the "
            "first publish and after the database file was replaced."
        )
    else:
        lines.append(
            "The full copy ran on the writer's thread and held up its commits for that long. Such a copy "
            "happens on the first publish and after the database file was replaced."
        )
    return lines + [""]


def _sizes(results: dict[str, Any]) -> list[str]:
    sizes = results["sizes"]
    labels = {
        "after_full_publish": "After the full copy",
        "before_compaction": "Before compaction (base and deltas)",
        "after_compaction": "After compaction, replaced files still on disk",
        "after_expiry": "After the replaced files expired",
    }
    rows = []
    for key, label in labels.items():
        state = sizes[key]
        rows.append(
            [
                label,
                _mib(sum(state["listed"]["feedback"].values())),
                _mib(sum(state["listed"]["outbox"].values())),
                _mib(state["listed_total"]),
                _mib(state["retired_total"]),
                _mib(state["disk_total"]),
            ]
        )
    duckdb_bytes = results["data"]["duckdb_bytes"]
    snapshot = sizes["after_compaction"]["listed_total"]
    lines = ["### Snapshot size", ""]
    lines += _table(
        ["state", "feedback (MiB)", "outbox (MiB)", "listed files (MiB)", "retired files (MiB)", "folder (MiB)"], rows
    )
    # The compacted files also contain the rows that the deltas added, so divide by their count.
    feedback_rows = results["compaction"]["rows"]["feedback"]
    per_table = {table: sum(sizes["after_compaction"]["listed"][table].values()) for table in ("feedback", "outbox")}
    lines.append(
        f"For comparison, the DuckDB file takes {_gib(duckdb_bytes)}; the compacted snapshot is "
        f"{snapshot / duckdb_bytes:.0%} of it. Its {feedback_rows:,} feedback rows take "
        f"{snapshot / feedback_rows:.1f} bytes each including their outbox entries: "
        f"{per_table['feedback'] / feedback_rows:.1f} in the feedback file and "
        f"{per_table['outbox'] / feedback_rows:.1f} in the outbox file."
    )
    return lines + [""]


def _columns(results: dict[str, Any]) -> list[str]:
    lines = ["### Largest columns of the compacted files", ""]
    rows = []
    for table, columns in results["columns"].items():
        total = sum(column["compressed"] for column in columns)
        for column in columns[:6]:
            rows.append(
                [
                    f"{table}.`{column['column']}`",
                    _mib(column["compressed"]),
                    _mib(column["uncompressed"]),
                    f"{column['compressed'] / total:.0%}",
                ]
            )
    lines += _table(["column", "compressed (MiB)", "uncompressed (MiB)", "share of its table's file"], rows)

    calibration = results["text_calibration"]
    lines.append(
        "Sizes from the Parquet column chunk metadata (zstd). To check that the generated texts are not easier "
        f"to compress than real ones, the benchmark compressed {calibration['bytes'] / 1024:.0f} KiB of the "
        "hand-written sample texts and as many bytes of generated texts with zlib (level 6). The samples shrank "
        f"to {calibration['sample_ratio']:.0%} of their size and the generated texts to "
        f"{calibration['synthetic_ratio']:.0%}."
    )
    return lines + [""]


def _queries(results: dict[str, Any]) -> list[str]:
    rows = []
    for query in results["queries"]:
        result = f"{query['first_value']:,}" if query["first_value"] is not None else f"{query['result_rows']:,} rows"
        rows.append(
            [
                query["name"],
                _seconds(query["median_s"]),
                _seconds(query["min_s"]),
                _seconds(query["max_s"]),
                result,
                _seconds(query["use"]["cpu_s"] / results["settings"]["query_runs"]),
                f"{query['use']['other_cores']:.2f}",
            ]
        )
    lines = ["### Queries through `feedbackbot.analysis`", ""]
    lines += _table(["query", "median", "min", "max", "result", "CPU time per run", "other cores"], rows)
    lines.append(
        f"With {results['settings']['threads']} DuckDB threads, a run takes at least its CPU time divided by "
        f"{results['settings']['threads']}. Wall times far above that, with high *other cores*, include waiting "
        "for the CPU while other processes ran."
    )
    lines.append("")
    if any(query.get("reference") for query in results["queries"]):
        lines.append(
            "The last row reads the compacted feedback file directly (`feedback_file`), without the "
            "`feedback` view. After compaction each id is in the file once, so it returns the same count. "
            "The view reads a lone base file without the window that keeps the newest version of each id "
            "(it applies the window only to ids that also appear in a delta), so the two times differ only "
            "by noise."
        )
        lines.append("")
    lines.append(f"`analysis.connect()` took {_seconds(results['connect_s'])}. The SQL of each query:")
    lines.append("")
    for query in results["queries"]:
        lines.append(f"- {query['name']}: `{query['sql']}`")
    return lines + [""]


def _not_measured(results: dict[str, Any]) -> list[str]:
    return [
        "## Not measured",
        "",
        "- **Ingest throughput while publishing.** The target is that publishing at full speed lowers ingest "
        "throughput by no more than 10 %. Measuring it needs the running service (Ray Serve behind the Nginx "
        "gateway) under a load generator, once with snapshots and once without, which `make bench` does "
        "(section 5 of docs/benchmarks.md). This benchmark runs the store and the publisher in one process "
        "without the service. The delta times above bound how long one publish blocks the writer's thread.",
        "- **Publishing while compaction runs.** Here compaction ran alone. In the service it runs on its own "
        "thread while the writer keeps publishing, and both compete for the same cores.",
        "- **Queries before compaction.** The queries ran on one base file per table. With up to "
        "`snapshot_compaction_deltas` (50 by default) delta files per table, readers open more files.",
        "- **Real text.** The texts are random sequences of real words. The zlib check above compares their "
        "compressibility with the hand-written samples, but real feedback at this scale may contain longer "
        "texts, more languages or repeated templates.",
        "",
    ]


# -- helpers ----------------------------------------------------------------------------------


def _phase_uses(results: dict[str, Any]) -> list[dict[str, float]]:
    uses = [results["data"]["generation"], results["full_publish"]["use"], results["compaction"]["use"]]
    uses += [delta["use"] for delta in results["deltas"]]
    uses += [query["use"] for query in results["queries"]]
    return uses


def _rows(rows: dict[str, int]) -> str:
    return f"{rows.get('feedback', 0):,} / {rows.get('outbox', 0):,}"


def _seconds(value: float) -> str:
    if value < 1:
        return f"{value * 1000:.0f} ms"
    return f"{value:.2f} s"


def _loads(loads: tuple[float, float, float] | list[float]) -> str:
    return ", ".join(f"{load:.2f}" for load in loads)


def _gib(value: float) -> str:
    return f"{value / 2**30:.2f} GiB"


def _mib(value: float) -> str:
    return f"{value / 2**20:,.1f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines + [""]
