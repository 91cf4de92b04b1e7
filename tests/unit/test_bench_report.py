"""The benchmark report: the memory target, judged on the sum of PSS, and the CPU notes of batches."""

from __future__ import annotations

from bench.findings import _batch_cpu_notes, _memory_notes
from bench.report import _targets
from bench.results import target_verdict

MIB = 2**20


def _row(role: str, rss_mib: int, pss_mib: int) -> dict[str, object]:
    return {"role": role, "pid": 1, "rss_bytes": rss_mib * MIB, "pss_bytes": pss_mib * MIB}


def _results(rows: list[dict[str, object]]) -> dict[str, object]:
    return {"pipeline": {"memory_at_rest": rows}}


def _memory_rows(results: dict[str, object]) -> list[str]:
    return [line for line in _targets(results) if line.startswith("| whole service at rest")]


def test_memory_target_uses_pss() -> None:
    rows = [_row("replica Enrichment", 2_000, 1_500), _row("Ray dashboard module A", 2_000, 400)]

    pss_row, rss_row = _memory_rows(_results(rows))

    assert pss_row.startswith("| whole service at rest, sum of PSS | < 3 GiB | 1.86 GiB |")
    assert pss_row.endswith("| met |")
    assert "3.91 GiB" in rss_row
    assert rss_row.endswith("| shown for comparison |")


def test_memory_target_missed_by_excess() -> None:
    rows = [_row("replica Enrichment", 4_000, 3_584)]

    pss_row, _ = _memory_rows(_results(rows))

    assert pss_row.endswith("| missed by 0.50 GiB |")


def test_memory_target_rss_without_pss() -> None:
    rows = [_row("replica Enrichment", 1_024, 512), {"role": "raylet", "pid": 2, "rss_bytes": 512 * MIB, "pss_bytes": None}]

    pss_row, _ = _memory_rows(_results(rows))

    assert "| 1.00 GiB (RSS for 1 process(es) without PSS) |" in pss_row


def test_memory_target_without_measurement() -> None:
    (pss_row,) = _memory_rows(_results([]))

    assert pss_row.endswith("| not measured | – | not measured |")


def test_memory_notes_dashboard_modules() -> None:
    rows = [_row("Ray dashboard module JobHead-0", 107, 21), _row("Ray dashboard module TrainHead-0", 107, 21), _row("raylet", 35, 31)]

    notes = _memory_notes(_results(rows))

    assert "The 2 Ray dashboard modules, forks of one process, hold 214 MiB RSS but 42 MiB PSS." in notes[1]


def test_batch_cpu_notes_estimate_model_rate() -> None:
    batch_row = {
        "kind": "batch", "batch_size": 200, "concurrency": 2, "items_per_s": 60.0, "other_cores": 0.01,
        "cpu_by_role": {"replica Enrichment": 1.5, "replica Notification": 0.2, "load generator (this process)": 0.1, "mail sink": 0.1},
    }  # fmt: skip
    results = {
        "machine": {"nproc": 2},
        "service_torch_threads": 1,
        "service_model_workers": 2,
        "serve_settings": {"user_configs": {"Enrichment": {"max_batch_size": 32, "model_batch_size": 8}}},
        "ceiling": {"rows": [{"threads": 1, "workers": 2, "batch_size": 8, "order": "sorted", "median_items_per_s": 80.0}]},
        "pipeline": {"batch": {"rows": [batch_row]}},
    }

    where, estimate = _batch_cpu_notes(results)

    assert "the service's processes used 1.80 cores" in where
    assert "The Enrichment replicas used 1.50 cores; the other roles of the service 0.30" in where
    assert "replica Notification 0.20, mail sink 0.10" in where
    assert "would score about 60.0 items/s, and the service stored 60.0 items/s" in estimate
    assert "The other roles' 0.30 cores are 15% of the machine" in estimate


def test_batch_cpu_notes_without_cpu_readings() -> None:
    results = {"pipeline": {"batch": {"rows": [{"batch_size": 10, "concurrency": 1, "items_per_s": 5.0}]}}}

    assert _batch_cpu_notes(results) == []


def test_batch_cpu_notes_use_cpu_seconds() -> None:
    batch_row = {"kind": "batch", "batch_size": 200, "concurrency": 2, "items_per_s": 70.0, "other_cores": 0.0, "cpu_by_role": {"replica Enrichment": 1.5}}
    ceiling_row = {"threads": 1, "workers": 2, "batch_size": 8, "order": "sorted", "median_items_per_s": 80.0, "median_items_per_cpu_s": 50.0, "median_cores": 1.6}
    results = {
        "machine": {"nproc": 2},
        "service_torch_threads": 1,
        "service_model_workers": 2,
        "serve_settings": {"user_configs": {"Enrichment": {"model_batch_size": 8}}},
        "ceiling": {"rows": [ceiling_row]},
        "pipeline": {"batch": {"rows": [batch_row]}},
    }

    _, estimate = _batch_cpu_notes(results)

    assert "50.0 per CPU second on 1.60 cores" in estimate
    assert "would score about 75.0 items/s" in estimate


def test_target_verdict_near_miss_factor() -> None:
    assert target_verdict(0.83, 0.85) == "missed by 2 percentage points (needs 1.02× the throughput)"
    assert target_verdict(0.31, 0.70) == "missed by 39 percentage points (needs 2.3× the throughput)"
    assert target_verdict(0.90, 0.85) == "met"
