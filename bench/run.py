"""Run the whole benchmark suite in one session and write docs/benchmarks.md.

    .venv/bin/python -m bench.run            # full run, about 19 minutes on 2 cores
    .venv/bin/python -m bench.run --quick    # smoke run, writes under build/bench/ only

The phases run in this order. First the bare model (`bench.ceiling`, in its own process).
Then the Ray service through its Nginx gateway: single and batch submissions, its memory
at rest and under load, and py-spy profiles of its busiest processes under single
submissions and under the batch setting with the most items/s. Last, the same
single submissions against `bench.baseline_app`, one FastAPI process without Ray behind
its own Nginx. Only one stack runs at a time. Raw results and profiles go to
build/bench/<time>/.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import httpx
import psutil

from bench import profiling, report
from bench.loadgen import LoadResult, probe, run_load, run_windows
from bench.processes import CpuMeter, CpuUse, PeakMemorySampler, memory_snapshot, role_of
from bench.results import best_batch
from bench.stacks import BaselinePorts, BaselineStack, RayStack, serve_settings
from bench.workload import batch_requests, load_valid_submissions, max_batch_body_bytes, new_run_id, single_requests
from feedbackbot.errors import ServiceError
from feedbackbot.service import Ports

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REPORT = PROJECT_ROOT / "docs" / "benchmarks.md"
ARTIFACTS_ROOT = PROJECT_ROOT / "build" / "bench"
# Away from Ray's worker ports (10002-19999), the integration tests' and `make run`'s ports.
SERVICE_PORTS = Ports(
    gateway=38080,
    serve=38000,
    ray_gcs=36379,
    dashboard=38265,
    ray_client=30001,
    dashboard_agent=52466,
    mail=32525,
    metrics_export=31090,
    haproxy_stats=30650,
    haproxy_metrics=30651,
    direct_http_first=30200,
    direct_grpc_first=30400,
)
# The copy of the service that does not publish, which runs beside SERVICE_PORTS' copy.
NO_PUBLISH_PORTS = Ports(
    gateway=39080,
    serve=39000,
    ray_gcs=39379,
    dashboard=39265,
    ray_client=39001,
    dashboard_agent=52566,
    mail=39525,
    metrics_export=39090,
    haproxy_stats=39650,
    haproxy_metrics=39651,
    direct_http_first=31200,
    direct_grpc_first=31400,
)
OUTBOX_DRAIN_TIMEOUT_S = 120.0
# snapshot_max_age_s of the comparison run: persistence then publishes only at its start.
NO_PUBLISH_MAX_AGE_S = 3600.0
CEILING_TIMEOUT_S = 900
# Errors that end one phase of the run. The report marks that phase as not measured.
PHASE_ERRORS = (ServiceError, RuntimeError, OSError, ValueError, httpx.HTTPError, subprocess.SubprocessError, json.JSONDecodeError)


@dataclass
class Options:
    """Parameters of one run, filled from the command line by `parse_options`."""

    quick: bool
    threads: list[int]
    ceiling_batch_sizes: list[int]
    ceiling_texts: int
    ceiling_max_s: float
    concurrencies: list[int]
    batch_sizes: list[int]
    batch_concurrencies: list[int]
    duration_s: float
    batch_duration_s: float
    warmup_s: float
    repeats: int
    settle_s: float
    profile_s: int
    profile_processes: int
    output: Path
    artifacts: Path
    in_flight_limits: list[int] = field(default_factory=list)
    fast_ingress: bool = False
    skip: set[str] = field(default_factory=set)
    command: str = ""
    render: Path | None = None


class Progress:
    """Prints one line per step with the time since the run started."""

    def __init__(self) -> None:
        self._started = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self._started:7.1f} s] {message}", flush=True)

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self._started


def summarize_runs(kind: str, runs: list[tuple[LoadResult, CpuUse]], loadavg: float, batch_size: int = 1) -> dict[str, Any]:
    """Return the medians over repeats of one measurement, with error counts summed."""
    errors: dict[str, int] = {}
    for result, _ in runs:
        for outcome, count in result.errors().items():
            errors[outcome] = errors.get(outcome, 0) + count

    latencies = [latency for result, _ in runs for latency in result.ok_latencies_s]
    return {
        "kind": kind,
        "concurrency": runs[0][0].concurrency,
        "batch_size": batch_size,
        "repeats": len(runs),
        "items_per_s": statistics.median(result.items_per_s for result, _ in runs),
        "items_per_s_each": [result.items_per_s for result, _ in runs],
        "requests_per_s": statistics.median(result.requests_per_s for result, _ in runs),
        "p50_ms": statistics.median(result.latency_ms(50) for result, _ in runs),
        "p95_ms": statistics.median(result.latency_ms(95) for result, _ in runs),
        "p99_ms": statistics.median(result.latency_ms(99) for result, _ in runs),
        "p99_with_retries_ms": statistics.median(result.submission_latency_ms(99) for result, _ in runs),
        "mean_ms": statistics.fmean(latencies) * 1000 if latencies else float("nan"),
        "requests": sum(result.requests for result, _ in runs),
        "ok": sum(result.ok for result, _ in runs),
        "items_accepted": sum(result.items_accepted for result, _ in runs),
        "items_rejected": sum(result.items_rejected for result, _ in runs),
        "items_without_sentiment": sum(result.items_without_sentiment for result, _ in runs),
        "errors": errors,
        "elapsed_s_each": [result.elapsed_s for result, _ in runs],
        "client_cores": statistics.median(result.client_cpu_s / result.elapsed_s for result, _ in runs),
        "machine_busy_cores": statistics.median(usage.machine_busy_cores for _, usage in runs),
        "other_cores": statistics.median(usage.other_cores for _, usage in runs),
        "loadavg_1m_before": loadavg,
    }


def cores_by_role(usages: list[CpuUse]) -> dict[str, float]:
    """Return the average cores each role used over several intervals, weighted by their length."""
    seconds: dict[str, float] = {}
    total_s = sum(usage.elapsed_s for usage in usages)
    for usage in usages:
        for role, cores in usage.cores_by_role().items():
            seconds[role] = seconds.get(role, 0.0) + cores * usage.elapsed_s
    return {role: used / total_s for role, used in sorted(seconds.items(), key=lambda item: -item[1])} if total_s else {}


def memory_rows(rows: list[Any]) -> list[dict[str, Any]]:
    return [{"pid": row.pid, "role": row.role, "rss_bytes": row.rss_bytes, "pss_bytes": row.pss_bytes} for row in rows]


class BenchmarkRun:
    """One run of every phase. `results` collects what `report.render` turns into Markdown."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.say = Progress()
        self.submissions = load_valid_submissions()
        self.run_id = new_run_id()
        self.settings = serve_settings()
        self.results: dict[str, Any] = {
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": options.command,
            "options": _options_dict(options),
            "machine": report.machine_info(),
            "versions": report.versions(),
            "service_torch_threads": int(self.settings["args"].get("torch_threads", 1)),
            "service_model_workers": int(self.settings["user_configs"].get("Enrichment", {}).get("model_workers", 1)),
            "serve_settings": self.settings,
            "errors": [],
        }

    def run(self) -> dict[str, Any]:
        options = self.options
        options.artifacts.mkdir(parents=True, exist_ok=True)
        self.say(f"Benchmark run {self.run_id}: artifacts in {options.artifacts}, report to {options.output}")

        if "ceiling" not in options.skip:
            self._guard("ceiling", self.measure_ceiling)
        if "pipeline" not in options.skip:
            self._guard("pipeline", self.measure_pipeline)
        if "snapshots" not in options.skip and "pipeline" not in options.skip:
            self._guard("snapshots", self.measure_snapshot_cost)
        if "baseline" not in options.skip:
            self._guard("baseline", self.measure_baseline)

        self.results["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.results["duration_s"] = self.say.elapsed_s
        (options.artifacts / "results.json").write_text(json.dumps(self.results, indent=2, default=str) + "\n")
        options.output.parent.mkdir(parents=True, exist_ok=True)
        options.output.write_text(report.render(self.results), encoding="utf-8")
        self.say(f"Wrote {options.output} and {options.artifacts / 'results.json'}")
        return self.results

    def _guard(self, phase: str, step: Callable[[], None]) -> None:
        """Run one phase. On a failure, record it and go on with the next phase."""
        try:
            step()
        except PHASE_ERRORS as error:
            message = f"{phase} failed: {type(error).__name__}: {error}"
            self.results["errors"].append(message)
            self.say(message)

    # -- 1. the bare model ---------------------------------------------------------------

    def measure_ceiling(self) -> None:
        options = self.options
        threads = sorted(set(options.threads) | {self.results["service_torch_threads"]})
        command = [
            sys.executable, "-m", "bench.ceiling",
            "--threads", ",".join(map(str, threads)),
            "--batch-sizes", ",".join(map(str, options.ceiling_batch_sizes)),
            "--texts", str(options.ceiling_texts),
            "--repeats", str(options.repeats),
            "--arrival-threads", str(self.results["service_torch_threads"]),
            "--workers", ",".join(map(str, sorted({1, self.results["service_model_workers"]}))),
            "--max-seconds", str(options.ceiling_max_s),
        ]  # fmt: skip
        loadavg = os.getloadavg()[0]
        self.say(f"Ceiling: bare model, torch threads {threads}, batch sizes {options.ceiling_batch_sizes} (load average {loadavg:.2f})")

        machine_before = psutil.cpu_times()
        children_before = _children_cpu_s()
        started = time.monotonic()
        completed = subprocess.run(
            command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=None, timeout=CEILING_TIMEOUT_S, check=False
        )
        elapsed_s = time.monotonic() - started
        if completed.returncode != 0:
            raise RuntimeError(f"bench.ceiling exited with status {completed.returncode}; its messages are above.")

        ceiling = json.loads(completed.stdout)
        busy_cores = _busy_cores(machine_before, psutil.cpu_times(), elapsed_s)
        own_cores = (_children_cpu_s() - children_before) / elapsed_s
        ceiling.update(loadavg_1m_before=loadavg, machine_busy_cores=busy_cores, other_cores=max(0.0, busy_cores - own_cores))
        for row in ceiling["rows"]:
            row["median_items_per_s"] = statistics.median(row["items_per_s"])
            # Texts per CPU second of the process: the model's rate per core that it actually used.
            per_cpu_s = [scored / cpu_s for scored, cpu_s in zip(row["texts_scored"], row.get("cpu_s") or []) if cpu_s > 0]
            if per_cpu_s:
                row["median_items_per_cpu_s"] = statistics.median(per_cpu_s)
                row["median_cores"] = statistics.median(cpu_s / elapsed_s for cpu_s, elapsed_s in zip(row["cpu_s"], row["elapsed_s"]))
        self.results["ceiling"] = ceiling

        best = max(ceiling["rows"], key=lambda row: row["median_items_per_s"])
        self.say(
            f"Ceiling: best {best['median_items_per_s']:.1f} items/s at {best['threads']} thread(s) "
            f"in {best.get('workers', 1)} worker(s), "
            f"batch size {best['batch_size']}, {best['order']} batches"
        )

    # -- 2 and 3. the Ray service --------------------------------------------------------

    def measure_pipeline(self) -> None:
        options = self.options
        data_dir = Path(tempfile.mkdtemp(prefix="feedbackbot-benchrun-service-"))
        stack = RayStack(data_dir, SERVICE_PORTS, progress=self.say, fast_ingress=self.options.fast_ingress)
        pipeline: dict[str, Any] = {"data_dir": str(data_dir)}
        self.results["pipeline"] = pipeline

        try:
            self.say(f"Pipeline: starting Ray, Serve, Nginx and the mail sink in {data_dir}")
            started = time.monotonic()
            stack.start()
            pipeline["start_s"] = time.monotonic() - started
            pipeline["submit_max_in_flight"] = stack.submit_in_flight_limit()
            self._measure_rest_memory(stack.roots, pipeline, "memory_at_rest")

            pipeline["single"], pipeline["cpu_by_role"], peaks = self._single_series(stack.url, stack.api_key, stack.roots, "Pipeline")
            pipeline["memory_peak_under_load"] = memory_rows(peaks)
            stack.remember_processes()

            if "shedding" not in options.skip:
                pipeline["shedding"] = self._shedding_series(stack)

            if "batch" not in options.skip:
                pipeline["batch"] = self._batch_series(stack)
            pipeline["memory_after_load"] = memory_rows(memory_snapshot(stack.roots()))

            if "profile" not in options.skip:
                pipeline["profile"] = self._profile(stack.url, stack.api_key, stack.roots, "pipeline")
                batch = best_batch(self.results)
                if batch:
                    pipeline["batch_profile"] = self._profile(
                        stack.url, stack.api_key, stack.roots, "pipeline-batch",
                        batch_size=batch["batch_size"], concurrency=batch["concurrency"],
                    )  # fmt: skip
            stack.remember_processes()
        finally:
            self.say("Pipeline: stopping the service")
            leftovers = stack.stop()
            pipeline["leftover_pids"] = leftovers
            self._report_leftovers("service", leftovers)
            stack.save_logs(self.options.artifacts / "service-logs")
            shutil.rmtree(data_dir, ignore_errors=True)

    def measure_snapshot_cost(self) -> None:
        """Measure the cost of publishing with two copies of the service, loaded in turn.

        One copy publishes as configured. The other runs with `snapshot_max_age_s` of 3600,
        so it publishes at its start and then every 30 minutes, never during a measurement.
        Both run for the whole phase, and the load generator alternates between them in the
        order A B B A A B. The machine's speed drifted by tens of percent within minutes, so
        measuring one copy after the other mistook that drift for a cost.
        """
        options = self.options
        concurrency = max(options.concurrencies)
        folders = {
            "with": Path(tempfile.mkdtemp(prefix="feedbackbot-benchrun-snap-")),
            "without": Path(tempfile.mkdtemp(prefix="feedbackbot-benchrun-nosnap-")),
        }
        stacks = {
            "with": RayStack(folders["with"], SERVICE_PORTS, progress=self.say, fast_ingress=options.fast_ingress),
            "without": RayStack(
                folders["without"], NO_PUBLISH_PORTS, progress=self.say, fast_ingress=options.fast_ingress,
                app_overrides={"snapshot_max_age_s": NO_PUBLISH_MAX_AGE_S},
            ),
        }  # fmt: skip
        with_results: dict[str, Any] = {}
        without: dict[str, Any] = {"snapshot_max_age_s": NO_PUBLISH_MAX_AGE_S, "alternated": True}
        self.results["with_snapshots"] = with_results
        self.results["without_snapshots"] = without

        try:
            for side, stack in stacks.items():
                self.say(f"Snapshot cost: starting the service {side} snapshots in {folders[side]}")
                stack.start()

            factories = {side: single_requests(self.submissions, f"{self.run_id}-{side}{concurrency}") for side in stacks}
            runs = self._alternate(stacks, factories, "single", concurrency, options.duration_s)
            with_results["single"] = summarize_runs("single", runs["with"], os.getloadavg()[0])
            without["single"] = summarize_runs("single", runs["without"], os.getloadavg()[0])

            if "batch" not in options.skip:
                batch_size, batch_concurrency = max(options.batch_sizes), max(options.batch_concurrencies)
                factories = {
                    side: batch_requests(self.submissions, f"{self.run_id}-{side}B{batch_size}x{batch_concurrency}", batch_size)
                    for side in stacks
                }
                runs = self._alternate(stacks, factories, "batch", batch_concurrency, options.batch_duration_s)
                with_results["batch"] = summarize_runs("batch", runs["with"], os.getloadavg()[0], batch_size)
                without["batch"] = summarize_runs("batch", runs["without"], os.getloadavg()[0], batch_size)
        finally:
            for side, stack in stacks.items():
                self.say(f"Snapshot cost: stopping the service {side} snapshots")
                leftovers = stack.stop()
                self._report_leftovers(f"service {side} snapshots", leftovers)
                shutil.rmtree(folders[side], ignore_errors=True)

    def _alternate(
        self, stacks: dict[str, RayStack], factories: dict[str, Any], kind: str, concurrency: int, duration_s: float
    ) -> dict[str, list[tuple[LoadResult, CpuUse]]]:
        """Measure each stack `repeats` times in turns that alternate which one goes first; return the runs by side."""
        runs: dict[str, list[tuple[LoadResult, CpuUse]]] = {side: [] for side in stacks}
        sides = list(stacks)
        for repeat in range(self.options.repeats):
            order = sides if repeat % 2 == 0 else sides[::-1]
            for side in order:
                stack = stacks[side]
                label = f"Snapshot cost, {side} snapshots"
                [(result, usage)] = self._measure_runs(
                    stack.url, stack.api_key, stack.roots, factories[side], kind, concurrency, duration_s, 1
                )
                runs[side].append((result, usage))
                self.say(
                    f"{label}: {kind} at concurrency {concurrency}, turn {repeat + 1}/{self.options.repeats}: "
                    f"{result.items_per_s:.1f} items/s, p99 {result.latency_ms(99):.0f} ms"
                )
                self._drain_outbox(stack.url, label)
        return runs

    def _measure_rest_memory(self, roots: Callable[[], list[int]], target: dict[str, Any], key: str) -> None:
        self.say(f"Waiting {self.options.settle_s:.0f} s for the stack to settle, then reading its memory at rest")
        time.sleep(self.options.settle_s)
        rows = memory_snapshot(roots())
        target[key] = memory_rows(rows)
        total_gib = sum(row.rss_bytes for row in rows) / 2**30
        self.say(f"Memory at rest: {len(rows)} processes, RSS {total_gib:.2f} GiB in total")

    def _single_series(
        self, url: str, api_key: str, roots: Callable[[], list[int]], label: str
    ) -> tuple[list[dict[str, Any]], dict[str, float], list[Any]]:
        """Measure single submissions at each concurrency, and sample memory at the highest one."""
        summaries = []
        busiest_usages: list[CpuUse] = []
        peaks: list[Any] = []
        highest = max(self.options.concurrencies)

        for concurrency in self.options.concurrencies:
            factory = single_requests(self.submissions, f"{self.run_id}-{label[0]}{concurrency}")
            if concurrency == highest:
                with PeakMemorySampler(roots()) as sampler:
                    summary, usages = self._measure(url, api_key, roots, factory, "single", concurrency, self.options.duration_s, label)
                peaks = sampler.peaks()
                busiest_usages = usages
            else:
                summary, usages = self._measure(url, api_key, roots, factory, "single", concurrency, self.options.duration_s, label)
            summary.update(self._drain_outbox(url, label))
            summaries.append(summary)

        return summaries, cores_by_role(busiest_usages), peaks

    def _shedding_series(self, stack: RayStack) -> list[dict[str, Any]]:
        """Measure single submissions at the highest concurrency under each gateway in-flight limit.

        The gateway reloads with the limit between the measurements and returns to its own
        setting at the end, so the phases after this one run as configured.
        """
        highest = max(self.options.concurrencies)
        summaries = []
        try:
            for limit in self.options.in_flight_limits:
                stack.service.reload_gateway({"FEEDBACKBOT_SUBMIT_MAX_IN_FLIGHT": str(limit)})
                factory = single_requests(self.submissions, f"{self.run_id}-L{limit}")
                summary, _ = self._measure(
                    stack.url, stack.api_key, stack.roots, factory, "single", highest, self.options.duration_s,
                    f"Pipeline, in-flight limit {limit}",
                )  # fmt: skip
                summary["submit_max_in_flight"] = limit
                summary.update(self._drain_outbox(stack.url, "Pipeline"))
                summaries.append(summary)
        finally:
            stack.service.reload_gateway({})
        return summaries

    def _batch_series(self, stack: RayStack) -> dict[str, Any]:
        batch: dict[str, Any] = {"rows": []}
        status, text = asyncio.run(
            probe(stack.url, stack.api_key, batch_requests(self.submissions, f"{self.run_id}-probe", 2)())
        )
        batch["probe"] = {"status": status, "body": text}
        if status == 404:
            self.say("Batch: POST /v1/feedback:batch returned 404 through the gateway; not measured")
            return batch
        if status != 200:
            self.say(f"Batch: the probe returned {status}: {text[:200]}; measuring anyway, errors are counted")

        for batch_size in self.options.batch_sizes:
            body_bytes = max_batch_body_bytes(self.submissions, batch_size)
            for concurrency in self.options.batch_concurrencies:
                factory = batch_requests(self.submissions, f"{self.run_id}-B{batch_size}x{concurrency}", batch_size)
                summary, usages = self._measure(
                    stack.url, stack.api_key, stack.roots, factory, "batch", concurrency,
                    self.options.batch_duration_s, "Batch", batch_size=batch_size,
                )  # fmt: skip
                summary["cpu_by_role"] = cores_by_role(usages)
                summary["max_body_bytes"] = body_bytes
                summary.update(self._drain_outbox(stack.url, "Batch"))
                batch["rows"].append(summary)
        return batch

    def _measure(
        self,
        url: str,
        api_key: str,
        roots: Callable[[], list[int]],
        factory: Any,
        kind: str,
        concurrency: int,
        duration_s: float,
        label: str,
        *,
        batch_size: int = 1,
    ) -> tuple[dict[str, Any], list[CpuUse]]:
        """Warm up, then measure `repeats` times, and return the summary and each repeat's CPU use."""
        description = f"{kind} submissions" if kind == "single" else f"batches of {batch_size}"
        loadavg = os.getloadavg()[0]
        self.say(f"{label}: {description} at concurrency {concurrency}: warming up {self.options.warmup_s:.0f} s (load average {loadavg:.2f})")
        runs = self._measure_runs(url, api_key, roots, factory, kind, concurrency, duration_s, self.options.repeats)

        for repeat, (result, usage) in enumerate(runs, start=1):
            errors = ", ".join(f"{outcome}: {count}" for outcome, count in result.errors().items()) or "none"
            self.say(
                f"{label}: {description} at concurrency {concurrency}, run {repeat}/{self.options.repeats}: "
                f"{result.items_per_s:.1f} items/s ({result.items_without_sentiment} without sentiment), "
                f"p99 {result.latency_ms(99):.0f} ms, errors {errors}, other load {usage.other_cores:.2f} cores"
            )

        return summarize_runs(kind, runs, loadavg, batch_size), [usage for _, usage in runs]

    def _measure_runs(
        self,
        url: str,
        api_key: str,
        roots: Callable[[], list[int]],
        factory: Any,
        kind: str,
        concurrency: int,
        duration_s: float,
        count: int,
    ) -> list[tuple[LoadResult, CpuUse]]:
        """Warm up, then measure `count` times, and return each measurement with its CPU use.

        Single submissions run as consecutive windows of one closed loop. A new loop per
        measurement would start with every worker sending at once, and behind an in-flight
        limit most of them would get 503 and come back in waves, which inflated p99. A batch
        takes seconds, so a window would count one batch more or less by chance. Batches
        therefore get a new loop per measurement, which awaits its last batches.
        """
        if kind != "single":
            asyncio.run(run_load(url, api_key, factory, concurrency=concurrency, duration_s=self.options.warmup_s))
            runs: list[tuple[LoadResult, CpuUse]] = []
            for _ in range(count):
                meter = CpuMeter(roots())
                meter.start()
                result = asyncio.run(run_load(url, api_key, factory, concurrency=concurrency, duration_s=duration_s))
                runs.append((result, meter.stop()))
            return runs

        usages: list[CpuUse] = []
        meter: CpuMeter | None = None

        def on_boundary(index: int) -> None:
            nonlocal meter
            if meter is not None:
                usages.append(meter.stop())
            meter = CpuMeter(roots()) if index < count else None
            if meter is not None:
                meter.start()

        results = asyncio.run(
            run_windows(
                url,
                api_key,
                factory,
                concurrency=concurrency,
                warmup_s=self.options.warmup_s,
                duration_s=duration_s,
                windows=count,
                on_boundary=on_boundary,
            )
        )
        return list(zip(results, usages))

    def _drain_outbox(self, url: str, label: str) -> dict[str, Any]:
        """Wait until the outbox has no pending entry, so that the next measurement starts even."""
        started = time.monotonic()
        pending_first: int | None = None
        pending: int | None = None
        while time.monotonic() - started < OUTBOX_DRAIN_TIMEOUT_S:
            pending = _pending_outbox(url)
            if pending_first is None:
                pending_first = pending
            if pending == 0:
                break
            time.sleep(1.0)

        waited_s = time.monotonic() - started
        if pending:
            self.say(f"{label}: {pending} outbox entries still pending after {waited_s:.0f} s; going on")
        elif pending_first:
            self.say(f"{label}: the sender delivered {pending_first} pending notification(s) in {waited_s:.1f} s")
        return {"outbox_pending_at_end": pending_first, "outbox_drain_s": waited_s, "outbox_pending_after_drain": pending}

    # -- profiles ----------------------------------------------------------------------

    def _profile(
        self,
        url: str,
        api_key: str,
        roots: Callable[[], list[int]],
        label: str,
        *,
        batch_size: int | None = None,
        concurrency: int | None = None,
    ) -> dict[str, Any]:
        """Profile the busiest Python processes with py-spy under load.

        The load is single submissions at the highest concurrency, or with `batch_size`,
        batches of that size at `concurrency`.
        """
        executable = profiling.py_spy_path()
        if executable is None:
            self.say("Profile: py-spy is not installed (pip install -e '.[bench]'); skipped")
            return {"error": "py-spy is not installed; install the bench extra with pip install -e '.[bench]'"}

        if batch_size is None:
            concurrency = max(self.options.concurrencies)
            factory = single_requests(self.submissions, f"{self.run_id}-{label}-profile")
            description = "single submissions"
        else:
            concurrency = concurrency or max(self.options.batch_concurrencies)
            factory = batch_requests(self.submissions, f"{self.run_id}-{label}-profile", batch_size)
            description = f"batches of {batch_size}"
        self.say(f"Profile ({label}): {description} at concurrency {concurrency}, py-spy for {self.options.profile_s} s")
        load = functools.partial(run_load, url, api_key, factory, concurrency=concurrency)
        profile = asyncio.run(
            profiling.profile_under_load(
                executable,
                load,
                roots,
                record_s=self.options.profile_s,
                process_count=self.options.profile_processes,
                output_prefix=self.options.artifacts / label,
                progress=self.say,
            )
        )
        profile["concurrency"] = concurrency
        profile["batch_size"] = batch_size or 1
        self.say(f"Profile ({label}): load ran at {profile['items_per_s_while_profiling']:.1f} items/s while profiling")
        return profile

    # -- 4. the baseline without Ray -----------------------------------------------------

    def measure_baseline(self) -> None:
        data_dir = Path(tempfile.mkdtemp(prefix="feedbackbot-benchrun-baseline-"))
        stack = BaselineStack(data_dir, BaselinePorts(), self.settings, progress=self.say)
        baseline: dict[str, Any] = {"data_dir": str(data_dir)}
        self.results["baseline"] = baseline

        try:
            self.say(f"Baseline: starting the plain FastAPI app, its gateway and mail sink in {data_dir}")
            started = time.monotonic()
            stack.start()
            baseline["start_s"] = time.monotonic() - started
            self._measure_rest_memory(stack.roots, baseline, "memory_at_rest")

            baseline["single"], baseline["cpu_by_role"], peaks = self._single_series(stack.url, stack.api_key, stack.roots, "Baseline")
            baseline["memory_peak_under_load"] = memory_rows(peaks)

            if "profile" not in self.options.skip:
                baseline["profile"] = self._profile(stack.url, stack.api_key, stack.roots, "baseline")
        finally:
            leftovers = stack.stop()
            baseline["leftover_pids"] = leftovers
            self._report_leftovers("baseline", leftovers)
            stack.save_logs(self.options.artifacts / "baseline-logs")
            shutil.rmtree(data_dir, ignore_errors=True)

    def _report_leftovers(self, name: str, leftovers: list[int]) -> None:
        if leftovers:
            described = ", ".join(f"{pid} ({_describe_pid(pid)})" for pid in leftovers)
            message = f"processes of the {name} still running after stop: {described}"
            self.results["errors"].append(message)
            self.say(message)
        else:
            self.say(f"Checked that no process of the {name} is left")


def _pending_outbox(url: str) -> int | None:
    try:
        response = httpx.get(url + "/healthz", timeout=10.0)
        return int(response.json()["deployments"]["persistence"]["outbox"]["pending"])
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _busy_cores(before: Any, after: Any, elapsed_s: float) -> float:
    busy = 0.0
    for name in after._fields:
        if name not in ("idle", "iowait", "guest", "guest_nice"):
            busy += getattr(after, name) - getattr(before, name)
    return busy / elapsed_s


def _describe_pid(pid: int) -> str:
    try:
        return role_of(psutil.Process(pid))
    except psutil.NoSuchProcess:
        return "exited"


def _options_dict(options: Options) -> dict[str, Any]:
    values = dict(vars(options))
    values["output"] = str(options.output)
    values["artifacts"] = str(options.artifacts)
    values["skip"] = sorted(options.skip)
    values["render"] = str(options.render) if options.render else None
    # Runs before this key restarted the load generator for every repeat of single submissions.
    values["single_windows"] = True
    return values


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


# Defaults of a full run and of a --quick smoke run. A command-line option replaces either.
FULL_DEFAULTS: dict[str, Any] = {
    "ceiling_batch_sizes": [1, 8, 16, 32],
    "ceiling_texts": 128,
    "ceiling_max_seconds": 8.0,
    "concurrencies": [1, 16, 64],
    "batch_sizes": [10, 50, 200],
    "batch_concurrencies": [1, 2],
    "duration": 10.0,
    "batch_duration": 6.0,
    "warmup": 3.0,
    "repeats": 3,
    "settle": 10.0,
    "profile_seconds": 15,
    "in_flight_limits": [8, 16],
    "output": DEFAULT_REPORT,
}
QUICK_DEFAULTS: dict[str, Any] = {
    "ceiling_batch_sizes": [1, 16],
    "ceiling_texts": 48,
    "ceiling_max_seconds": 3.0,
    "concurrencies": [1, 16],
    "batch_sizes": [10],
    "batch_concurrencies": [2],
    "duration": 4.0,
    "batch_duration": 4.0,
    "warmup": 1.0,
    "repeats": 1,
    "settle": 3.0,
    "profile_seconds": 5,
    "in_flight_limits": [8],
    "output": ARTIFACTS_ROOT / "quick.md",
}


def parse_options(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="Benchmark the bare model, the Ray pipeline and a plain FastAPI baseline, and write docs/benchmarks.md.",
    )
    parser.add_argument("--quick", action="store_true", help="Smoke run: short phases, one repeat, report under build/bench/.")
    parser.add_argument("--threads", type=_int_list, help="Torch thread counts for the bare model (default: 1 to nproc).")
    parser.add_argument("--ceiling-batch-sizes", type=_int_list, help="Batch sizes for the bare model (default: 1,8,16,32).")
    parser.add_argument("--ceiling-texts", type=int, help="Texts per bare-model measurement (default: 128).")
    parser.add_argument(
        "--ceiling-max-seconds", type=float, help="Time limit of one bare-model measurement, in seconds (default: 8)."
    )
    parser.add_argument("--concurrencies", type=_int_list, help="Concurrencies of single submissions (default: 1,16,64).")
    parser.add_argument("--batch-sizes", type=_int_list, help="Items per batch submission (default: 10,50,200).")
    parser.add_argument("--batch-concurrencies", type=_int_list, help="Concurrencies of batch submissions (default: 1,2).")
    parser.add_argument(
        "--in-flight-limits",
        type=_int_list,
        help="Gateway limits of single submissions in flight (FEEDBACKBOT_SUBMIT_MAX_IN_FLIGHT) under which single "
        "submissions at the highest concurrency are measured again (default: 8,16).",
    )
    parser.add_argument("--duration", type=float, help="Seconds of one single-submission measurement (default: 10).")
    parser.add_argument("--batch-duration", type=float, help="Seconds of one batch measurement (default: 6).")
    parser.add_argument("--warmup", type=float, help="Seconds of warm-up before each measurement (default: 3).")
    parser.add_argument("--repeats", type=int, help="Measurements per setting, of which the report shows medians (default: 3).")
    parser.add_argument("--settle", type=float, help="Seconds to wait after a start before reading memory at rest (default: 10).")
    parser.add_argument("--profile-seconds", type=int, help="Seconds that py-spy records each process (default: 15).")
    parser.add_argument("--profile-processes", type=int, default=4, help="Busiest Python processes to profile (default: %(default)s).")
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=["ceiling", "pipeline", "shedding", "batch", "profile", "snapshots", "baseline"],
        help="Leave out a phase. Repeat the option to leave out several.",
    )
    parser.add_argument(
        "--fast-ingress",
        action="store_true",
        help="Run the service with Ray Serve's HAProxy ingress and throughput-optimised mode, as FEEDBACKBOT_FAST_INGRESS=1 does.",
    )
    parser.add_argument("--output", type=Path, help="Report path (default: docs/benchmarks.md, or build/bench/quick.md with --quick).")
    parser.add_argument(
        "--render",
        type=Path,
        metavar="RESULTS_JSON",
        help="Measure nothing: write the report from the results.json of an earlier run.",
    )
    args = parser.parse_args(argv)

    defaults = QUICK_DEFAULTS if args.quick else FULL_DEFAULTS

    def chosen(name: str) -> Any:
        value = getattr(args, name)
        return defaults[name] if value is None else value

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return Options(
        quick=args.quick,
        render=args.render,
        threads=args.threads or list(range(1, len(os.sched_getaffinity(0)) + 1)),
        ceiling_batch_sizes=chosen("ceiling_batch_sizes"),
        ceiling_texts=chosen("ceiling_texts"),
        ceiling_max_s=chosen("ceiling_max_seconds"),
        concurrencies=chosen("concurrencies"),
        batch_sizes=chosen("batch_sizes"),
        batch_concurrencies=chosen("batch_concurrencies"),
        in_flight_limits=chosen("in_flight_limits"),
        duration_s=chosen("duration"),
        batch_duration_s=chosen("batch_duration"),
        warmup_s=chosen("warmup"),
        repeats=chosen("repeats"),
        settle_s=chosen("settle"),
        profile_s=chosen("profile_seconds"),
        profile_processes=args.profile_processes,
        output=Path(chosen("output")).resolve(),
        artifacts=ARTIFACTS_ROOT / stamp,
        skip=set(args.skip),
        fast_ingress=args.fast_ingress,
        command=shlex.join(["python", "-m", "bench.run", *(argv if argv is not None else sys.argv[1:])]),
    )


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    if options.render is not None:
        results = json.loads(options.render.read_text(encoding="utf-8"))
        options.output.write_text(report.render(results), encoding="utf-8")
        print(f"Wrote {options.output} from {options.render}")
        return 0

    run = BenchmarkRun(options)
    results = run.run()
    if results["errors"]:
        print("Finished with errors:\n  " + "\n  ".join(results["errors"]), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
