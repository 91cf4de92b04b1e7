"""The bare-model benchmark: its worker threads, its rounds of repeats and the lookup of its rows by workers."""

from __future__ import annotations

import threading

import pytest

import bench.ceiling
from bench.ceiling import _time_once, measure
from bench.results import ceiling_at


class RecordingModel:
    """Stands in for SentimentModel: records each batch and the thread that scored it."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, ...]] = []
        self.threads: set[int] = set()
        self._lock = threading.Lock()

    def predict_positive(self, texts: list[str], *, batch_size: int) -> list[float]:
        with self._lock:
            self.batches.append(tuple(texts))
            self.threads.add(threading.get_ident())
        return [0.5] * len(texts)


def test_time_once_with_workers_scores_each_batch_once() -> None:
    batches = [[f"text {index}", f"other {index}"] for index in range(7)]
    model = RecordingModel()

    scored, elapsed_s, cpu_s = _time_once(model, batches, max_seconds=60.0, workers=2)  # type: ignore[arg-type]

    assert scored == 14
    assert elapsed_s > 0
    assert sorted(model.batches) == sorted(tuple(batch) for batch in batches)


def test_time_once_single_worker_caller_thread() -> None:
    model = RecordingModel()

    scored, _, _ = _time_once(model, [["a"], ["b", "c"]], max_seconds=60.0)  # type: ignore[arg-type]

    assert scored == 3
    assert model.threads == {threading.get_ident()}


def test_measure_repeats_in_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    model = RecordingModel()
    model.version = "recording"  # type: ignore[attr-defined]
    switches: list[int] = []
    monkeypatch.setattr(bench.ceiling.SentimentModel, "load", classmethod(lambda cls, path, num_threads: model))
    monkeypatch.setattr(bench.ceiling, "set_torch_threads", switches.append)

    result = measure([1, 2], [1, 4], text_count=4, repeats=2, arrival_threads=[], max_seconds=60.0)

    # Per round: thread count 1 (warm-up, 4 batches of 1, 1 batch of 4), then thread count 2 alike.
    sizes = [len(batch) for batch in model.batches]
    assert switches == [1, 2, 1, 2]
    assert sizes == [4, 1, 1, 1, 1, 4, 4, 1, 1, 1, 1, 4] * 2
    assert result["in_rounds"] is True
    assert [(row["threads"], row["batch_size"], len(row["items_per_s"])) for row in result["rows"]] == [
        (1, 1, 2), (1, 4, 2), (2, 1, 2), (2, 4, 2),
    ]  # fmt: skip


def test_ceiling_at_filters_by_workers() -> None:
    rows = [
        {"threads": 1, "workers": 1, "batch_size": 8, "order": "sorted", "median_items_per_s": 50.0},
        {"threads": 1, "workers": 2, "batch_size": 8, "order": "sorted", "median_items_per_s": 95.0},
        # A row of a run before worker counts existed counts as one worker.
        {"threads": 2, "batch_size": 8, "order": "sorted", "median_items_per_s": 90.0},
    ]
    results = {"ceiling": {"rows": rows}}

    assert ceiling_at(results, 1, "sorted", 8)["median_items_per_s"] == 50.0
    assert ceiling_at(results, 1, "sorted", 8, workers=2)["median_items_per_s"] == 95.0
    assert ceiling_at(results, 1, workers=None)["median_items_per_s"] == 95.0
    assert ceiling_at(results, 2)["median_items_per_s"] == 90.0
    assert ceiling_at(results, 2, workers=2) is None
