"""The ceiling: items/s of the bare sentiment model in one process, without HTTP or Ray.

    python -m bench.ceiling --threads 1,2 --workers 1,2 --batch-sizes 1,16,32 --texts 128 --repeats 3

`bench.run` starts this module in a fresh process, so that torch's threads and memory stay
out of the load generator. It prints one JSON object on stdout and its progress on stderr.

A "sorted" measurement batches the texts as `SentimentModel.predict_positive` does for a
long list: sorted by length, so that its batches carry little padding. An "arrival"
measurement batches consecutive texts in data-set order, as the Enrichment replica
batches requests in the order they arrive. Either way each batch is one
`predict_positive` call. A measurement stops after `--max-seconds` even when texts are
left, so that an overloaded machine cannot stretch the run. The batches then run in a
shuffled order, so that a partial measurement is not biased towards short texts.

With more than one worker, that many threads score the batches at the same time, each
taking every n-th batch, as the Enrichment replica runs `model_workers` forward passes at
once. Such rows are measured in sorted order only, and only where threads times workers
does not exceed the machine's cores.

The repeats run in rounds: each round times every setting once, and a row's median is
over its rounds. A phase in which the machine runs faster or slower then touches every
setting about alike.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from bench.workload import load_valid_submissions
from feedbackbot.sentiment import SentimentModel, set_torch_threads


def measure(
    thread_counts: list[int],
    batch_sizes: list[int],
    text_count: int,
    repeats: int,
    arrival_threads: list[int],
    max_seconds: float,
    worker_counts: tuple[int, ...] = (1,),
) -> dict[str, object]:
    """Time the model for each thread count, worker count, batch size and batching order, and return items/s of every repeat."""
    texts = _texts(text_count)

    started = time.monotonic()
    model = SentimentModel.load("builtin", num_threads=thread_counts[0])
    load_s = time.monotonic() - started
    _log(f"Loaded {model.version} in {load_s:.1f} s; timing {len(texts)} texts")

    cores = os.cpu_count() or 1
    plan: dict[int, list[tuple[int, str, int]]] = {}
    for threads in thread_counts:
        settings = [(1, "sorted")]
        if threads in arrival_threads:
            settings.append((1, "arrival"))
        settings += [(workers, "sorted") for workers in worker_counts if workers > 1 and threads * workers <= cores]
        plan[threads] = [
            (workers, order, batch_size)
            for workers, order in settings
            for batch_size in batch_sizes
            # Batches of one text are the same in either order.
            if not (order == "arrival" and batch_size == 1)
        ]

    # Each round times every setting once, so that a change in the machine's speed during
    # the run spreads over all settings instead of favouring the ones timed in a fast phase.
    runs: dict[tuple[int, int, str, int], list[tuple[int, float, float]]] = {}
    for round_number in range(1, repeats + 1):
        for threads in thread_counts:
            set_torch_threads(threads)
            # One untimed pass after each switch warms up the thread pool and the allocator.
            model.predict_positive(texts[:32], batch_size=16)
            for workers, order, batch_size in plan[threads]:
                batches = _batches(texts, batch_size, order)
                runs.setdefault((threads, workers, order, batch_size), []).append(_time_once(model, batches, max_seconds, workers))
        _log(f"  round {round_number} of {repeats} done: every setting timed once")

    rows = []
    for (threads, workers, order, batch_size), timed in runs.items():
        rates = [scored / elapsed_s for scored, elapsed_s, _ in timed]
        scored_least = min(scored for scored, _, _ in timed)
        _log(
            f"  threads {threads}, workers {workers}, batch size {batch_size}, {order}: {statistics.median(rates):.1f} items/s "
            f"(median of {repeats}, at least {scored_least} of {len(texts)} texts each)"
        )
        rows.append(
            {
                "threads": threads,
                "workers": workers,
                "batch_size": batch_size,
                "order": order,
                "items_per_s": rates,
                "texts_scored": [scored for scored, _, _ in timed],
                "elapsed_s": [elapsed_s for _, elapsed_s, _ in timed],
                "cpu_s": [cpu_s for _, _, cpu_s in timed],
            }
        )

    return {
        "model_version": model.version,
        "texts": len(texts),
        "load_s": load_s,
        "max_seconds": max_seconds,
        "in_rounds": True,
        "rows": rows,
    }


def _batches(texts: list[str], batch_size: int, order: str) -> list[list[str]]:
    """Split the texts into batches by length ("sorted") or by position ("arrival"), in a fixed shuffled order."""
    ordered = sorted(texts, key=len) if order == "sorted" else list(texts)
    batches = [ordered[start : start + batch_size] for start in range(0, len(ordered), batch_size)]
    random.Random(batch_size).shuffle(batches)
    return batches


def _time_once(model: SentimentModel, batches: list[list[str]], max_seconds: float, workers: int = 1) -> tuple[int, float, float]:
    """Score the batches with `workers` threads until all are done or `max_seconds` have passed.

    Returns the texts scored, the seconds taken and the CPU seconds of the whole process
    (all threads) in that time.
    """
    begin = time.perf_counter()
    cpu_begin = time.process_time()

    def score_share(share: list[list[str]]) -> int:
        scored = 0
        for batch in share:
            model.predict_positive(batch, batch_size=len(batch))
            scored += len(batch)
            if time.perf_counter() - begin > max_seconds:
                break
        return scored

    if workers == 1:
        scored = score_share(batches)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            scored = sum(pool.map(score_share, [batches[worker::workers] for worker in range(workers)]))
    return scored, time.perf_counter() - begin, time.process_time() - cpu_begin


def _texts(count: int) -> list[str]:
    """Return `count` feedback texts spread evenly over the sample data set, repeating it when needed."""
    pool = [submission["feedback_text"] for submission in load_valid_submissions()]
    if count >= len(pool):
        return [pool[index % len(pool)] for index in range(count)]
    return [pool[index * len(pool) // count] for index in range(count)]


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _int_list(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Measure items/s of the bare sentiment model.")
    parser.add_argument("--threads", type=_int_list, required=True, help="Torch thread counts, comma-separated.")
    parser.add_argument("--batch-sizes", type=_int_list, required=True, help="Batch sizes, comma-separated.")
    parser.add_argument("--texts", type=int, default=128, help="Texts per measurement (default: %(default)s).")
    parser.add_argument("--repeats", type=int, default=3, help="Measurements per setting (default: %(default)s).")
    parser.add_argument(
        "--max-seconds", type=float, default=8.0, help="Time limit of one measurement, in seconds (default: %(default)s)."
    )
    parser.add_argument(
        "--arrival-threads",
        type=_int_list,
        default=[],
        help="Thread counts that are also timed with batches in arrival order, comma-separated (default: none).",
    )
    parser.add_argument(
        "--workers",
        type=_int_list,
        default=[1],
        help="Numbers of threads that score batches at the same time, comma-separated (default: 1).",
    )
    args = parser.parse_args(argv)

    result = measure(
        args.threads, args.batch_sizes, args.texts, args.repeats, args.arrival_threads, args.max_seconds, tuple(args.workers)
    )
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
