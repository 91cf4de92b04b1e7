"""The targets, lookups in the results of `bench.run`, and number formats, for the report and its findings."""

from __future__ import annotations

import math
from typing import Any

BATCH_TARGET = 0.85
SINGLE_TARGET = 0.70
P99_TARGET_MS = 500.0
MEMORY_TARGET_BYTES = 3 * 2**30
# The profiles of a run: (section of the results, key, name in the report).
PROFILED_LOADS = (
    ("pipeline", "profile", "service"),
    ("pipeline", "batch_profile", "service under batches"),
    ("baseline", "profile", "baseline"),
)
# Largest share of ingest throughput that snapshot publishing may cost.
SNAPSHOT_DROP_TARGET = 0.10
ALLOWED_ERRORS = {"429", "503"}
# Other processes using more than this many cores on average mark the machine as busy.
BUSY_OTHER_CORES = 0.2


def format_number(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}"


def format_mib(value: int | None) -> str:
    return "–" if value is None else f"{value / 2**20:,.0f}"


def format_gib(value: float) -> str:
    return f"{value / 2**30:.2f} GiB"


def format_errors(errors: dict[str, int]) -> str:
    return ", ".join(f"{status}: {count}" for status, count in errors.items()) or "none"


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines + [""]


def best_ceiling(results: dict[str, Any]) -> dict[str, Any] | None:
    """Return the bare-model row with the highest median items/s, the reference of every target."""
    ceiling = results.get("ceiling")
    if not ceiling or not ceiling.get("rows"):
        return None
    return max(ceiling["rows"], key=lambda row: row["median_items_per_s"])


def ceiling_at(
    results: dict[str, Any], threads: int, order: str | None = None, batch_size: int | None = None, workers: int | None = 1
) -> dict[str, Any] | None:
    """Return the fastest bare-model row with these settings. None leaves a setting open.

    Rows of runs before the ceiling had worker counts have none, and count as one worker.
    """
    rows = [
        row
        for row in (results.get("ceiling") or {}).get("rows", [])
        if row["threads"] == threads
        and order in (None, row["order"])
        and batch_size in (None, row["batch_size"])
        and workers in (None, row.get("workers", 1))
    ]
    return max(rows, key=lambda row: row["median_items_per_s"]) if rows else None


def highest_single(section: dict[str, Any] | None) -> dict[str, Any] | None:
    """Return the single-submission row at the highest concurrency, which the targets are about."""
    rows = (section or {}).get("single") or []
    return max(rows, key=lambda row: row["concurrency"]) if rows else None


def best_batch(results: dict[str, Any]) -> dict[str, Any] | None:
    rows = ((results.get("pipeline") or {}).get("batch") or {}).get("rows") or []
    return max(rows, key=lambda row: row["items_per_s"]) if rows else None


def all_measurements(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for section in ("pipeline", "baseline"):
        part = results.get(section) or {}
        rows += part.get("single") or []
        rows += (part.get("batch") or {}).get("rows") or []
    return rows


def sum_field(rows: list[dict[str, Any]] | None, key: str) -> int | None:
    if not rows:
        return None
    values = [row[key] for row in rows if row.get(key) is not None]
    return sum(values) if values else None


def target_verdict(ratio: float | None, target: float) -> str:
    """Return "met", or by how many percentage points and by what factor the ratio misses the target."""
    if ratio is None:
        return "not measured"
    if ratio >= target:
        return "met"
    needed = target / ratio if ratio > 0 else math.inf
    # Two decimals for a near miss, where one would print 1.0×.
    factor = f"{needed:.2f}" if needed < 1.1 else f"{needed:.1f}"
    return f"missed by {100 * (target - ratio):.0f} percentage points (needs {factor}× the throughput)"
