"""Measure the Parquet files of a snapshot folder for `bench.snapshot_scale`."""

from __future__ import annotations

import statistics
import zlib
from pathlib import Path
from typing import Any

import duckdb

from bench.snapshot_scale_data import Vocabulary
from feedbackbot.snapshot_manifest import Manifest, read_manifest
from feedbackbot.snapshots import TABLES


def snapshot_sizes(folder: Path, manifest: Manifest | None) -> dict[str, Any]:
    """Return the bytes of the files that the manifest lists, per table and kind, of retired files and of the folder."""
    listed: dict[str, dict[str, int]] = {}
    for table in TABLES:
        by_kind = {"base": 0, "delta": 0}
        for snapshot_file in manifest.files(table) if manifest else ():
            by_kind[snapshot_file.kind] += (folder / snapshot_file.path).stat().st_size
        listed[table] = by_kind

    retired = 0
    for retired_file in manifest.retired if manifest else ():
        path = folder / retired_file.path
        retired += path.stat().st_size if path.exists() else 0

    on_disk = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
    return {
        "listed": listed,
        "listed_total": sum(sum(by_kind.values()) for by_kind in listed.values()),
        "retired_total": retired,
        "disk_total": on_disk,
    }


def compare_text_compression(snapshot_dir: Path, vocabulary: Vocabulary) -> dict[str, Any]:
    """Measure the feedback texts of the compacted snapshot and compare them with the samples.

    Compresses the hand-written sample texts and as many bytes of generated texts with zlib.
    A generated ratio at or above the samples' ratio means that the generated texts are no
    easier to compress than real ones. Also returns the texts' total characters, so that the
    report can give the snapshot's bytes per text character.
    """
    samples = "\n".join(vocabulary.sample_texts).encode()
    files = base_files(snapshot_dir, "feedback")
    with duckdb.connect(":memory:") as connection:
        texts = connection.execute(
            "SELECT feedback_text FROM read_parquet(?) LIMIT ?", [files, len(vocabulary.sample_texts) * 4]
        ).fetchall()
        text_chars, text_rows = connection.execute(
            "SELECT sum(length(feedback_text)), count(*) FROM read_parquet(?)", [files]
        ).fetchone()
    synthetic = "\n".join(text for (text,) in texts).encode()[: len(samples)]
    return {
        "bytes": len(samples),
        "sample_ratio": len(zlib.compress(samples, 6)) / len(samples),
        "synthetic_ratio": len(zlib.compress(synthetic, 6)) / len(synthetic),
        "sample_mean_chars": statistics.mean(len(text) for text in vocabulary.sample_texts),
        "text_chars": int(text_chars),
        "text_rows": text_rows,
    }


def column_sizes(snapshot_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Return the compressed and uncompressed bytes of each column of each table's base files, largest first."""
    sizes = {}
    with duckdb.connect(":memory:") as connection:
        for table in TABLES:
            rows = connection.execute(
                "SELECT path_in_schema, sum(total_compressed_size), sum(total_uncompressed_size) "
                "FROM parquet_metadata(?) GROUP BY ALL ORDER BY 2 DESC",
                [base_files(snapshot_dir, table)],
            ).fetchall()
            sizes[table] = [
                {"column": name, "compressed": compressed, "uncompressed": uncompressed}
                for name, compressed, uncompressed in rows
            ]
    return sizes


def base_files(snapshot_dir: Path, table: str) -> list[str]:
    """Return the paths of the base files that the manifest lists for `table`."""
    manifest = read_manifest(snapshot_dir)
    return [str(snapshot_dir / f.path) for f in manifest.files(table) if f.kind == "base"]
