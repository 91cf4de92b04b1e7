"""py-spy profiles of the busiest Python processes while load runs, weighted by thread CPU time.

`py-spy record` samples a process from outside (it reads the process memory through
ptrace, so it needs root or CAP_SYS_PTRACE). It leaves out samples of threads that it
detects as waiting, but a thread that waits inside C or C++ code (Ray's core worker, an event
loop in uvloop) can still be sampled as active. Sample counts alone therefore overstate
such threads. The summary weights each thread's samples by the CPU time that the kernel
charged to that thread over the same interval (/proc/<pid>/task/<tid>/stat, through
psutil). Threads that use CPU without any Python sample, such as Ray's C++ threads, are
listed by their OS thread name.

A sample counts for the innermost frame that belongs to a package or to this project,
skipping frames of the standard library: a sample in ssl.py called by apprise counts for
apprise. A stack made of standard-library frames alone counts for its innermost frame.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench.loadgen import LoadResult
from bench.processes import CpuMeter, process_tree, python_pids

PROJECT_ROOT = Path(__file__).resolve().parent.parent
STANDARD_LIBRARY = re.compile(r"/lib/python3\.\d+/")
SPEEDSCOPE_THREAD = re.compile(r"^Thread (\d+)")
SAMPLE_RATE_HZ = 100
# Seconds of load before the busiest processes are chosen, and seconds of CPU readings to choose them.
WARM_S = 3.0
SELECT_S = 3.0

# Groups of packages and project files, tried in order. The first fragment found in a
# frame's file path decides.
PACKAGE_GROUPS = (
    ("model (torch, transformers, tokenizers)", ("/torch/", "/transformers/", "/tokenizers/", "feedbackbot/sentiment.py")),
    ("DuckDB", ("/duckdb/", "feedbackbot/store.py")),
    ("pydantic and validation", ("/pydantic/", "/pydantic_core/", "/email_validator/", "models/feedback.py")),
    ("HTTP server (uvicorn, starlette, FastAPI, h11, httptools)", ("/uvicorn/", "/starlette/", "/fastapi/", "/h11/", "/httptools/", "/anyio/")),
    ("mail (apprise)", ("/apprise/",)),
    ("mail sink (aiosmtpd)", ("/aiosmtpd/", "feedbackbot/mailsink.py")),
    ("Ray Serve", ("/ray/serve/",)),
    ("Ray core (workers, RPC, serialization)", ("/ray/", "/grpc/", "/msgpack/", "cloudpickle")),
    ("project code", ("/deployments/", "/feedbackbot/", "/models/", "/bench/", "graph.py")),
)
# Groups of standard-library files, for stacks without any package frame.
STANDARD_GROUPS = (
    ("asyncio event loop", ("/asyncio/",)),
    ("logging", ("/logging/",)),
    ("mail (smtplib, ssl, socket)", ("smtplib.py", "ssl.py", "socket.py", "/email/")),
    # A thread whose target is a C function (uvloop's run_forever, a C++ library's
    # thread) shows no Python frame below Thread.run.
    ("native code in a thread, below Thread.run", ("threading.py",)),
    ("thread pools and queues", ("queue.py", "concurrent/futures")),
)


@dataclass
class ProcessProfile:
    """The CPU-weighted summary of one process's samples.

    `cpu_cores` is the process's CPU use when it was chosen; `recorded_cores` is the
    sum of its threads' CPU use while py-spy recorded. The two group tables are in cores.
    """

    pid: int
    role: str
    cpu_cores: float
    recorded_cores: float = 0.0
    samples: int = 0
    cores_by_group: dict[str, float] = field(default_factory=dict)
    cores_by_frame: list[tuple[str, float]] = field(default_factory=list)
    speedscope_path: Path | None = None
    dump_path: Path | None = None
    error: str | None = None


async def profile_under_load(
    executable: str,
    load: Callable[..., Awaitable[LoadResult]],
    roots: Callable[[], list[int]],
    *,
    record_s: int,
    process_count: int,
    output_prefix: Path,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """Run `load`, choose the busiest Python processes of the stack, and profile them with py-spy.

    `load(duration_s=...)` sends the requests. The processes are chosen by their CPU use
    over SELECT_S seconds after WARM_S seconds of load. Each one gets a `py-spy record`
    for `record_s` seconds and one `py-spy dump` halfway through, and the files go to
    `<output_prefix>-<role>-<pid>.*`. Returns the CPU readings and the summaries.
    """
    load_task = asyncio.create_task(load(duration_s=WARM_S + SELECT_S + record_s + 2))

    await asyncio.sleep(WARM_S)
    meter = CpuMeter(roots(), include_self=False)
    meter.start()
    await asyncio.sleep(SELECT_S)
    usage = meter.stop()

    candidates = set(python_pids(process_tree(roots())))
    ranked = sorted(
        ((pid, role, cores) for pid, (role, cores) in usage.cores_by_process.items() if pid in candidates),
        key=lambda item: -item[2],
    )
    chosen = ranked[:process_count]
    progress("Profile: busiest Python processes " + ", ".join(f"{role} (pid {pid}, {cores:.2f} cores)" for pid, role, cores in chosen))

    profiles = []
    recorders = []
    cpu_before = {}
    for pid, role, cores in chosen:
        stem = f"{output_prefix}-{_slug(role)}-{pid}"
        profile = ProcessProfile(pid=pid, role=role, cpu_cores=cores)
        profile.speedscope_path = Path(stem + ".speedscope.json")
        profile.dump_path = Path(stem + ".dump.txt")
        cpu_before[pid] = thread_cpu_seconds(pid)
        recorders.append(start_record(executable, pid, record_s, profile.speedscope_path))
        profiles.append(profile)
    recording_started = time.monotonic()

    await asyncio.sleep(record_s / 2)
    for profile in profiles:
        profile.error = await asyncio.to_thread(dump, executable, profile.pid, profile.dump_path)

    # py-spy stops after record_s, and the threads' CPU is read at that moment.
    await asyncio.sleep(max(0.0, recording_started + record_s - time.monotonic()))
    cpu_after = {profile.pid: thread_cpu_seconds(profile.pid) for profile in profiles}
    recorded_s = time.monotonic() - recording_started

    for profile, recorder in zip(profiles, recorders):
        output, _ = await asyncio.to_thread(recorder.communicate, timeout=60)
        if recorder.returncode != 0 or not profile.speedscope_path.exists():
            profile.error = f"py-spy record exited with {recorder.returncode}: {output.decode(errors='replace').strip()[-300:]}"
            continue
        summarize(profile, profile.speedscope_path, thread_cores(cpu_before[profile.pid], cpu_after[profile.pid], recorded_s))

    result = await load_task
    return {
        "record_s": record_s,
        "items_per_s_while_profiling": result.items_per_s,
        "cpu_by_process": [
            {"pid": pid, "role": role, "cores": cores}
            for pid, (role, cores) in sorted(usage.cores_by_process.items(), key=lambda item: -item[1][1])
        ],
        "machine_busy_cores": usage.machine_busy_cores,
        "processes": [_profile_dict(profile) for profile in profiles],
    }


def py_spy_path() -> str | None:
    """Return the py-spy executable of this environment, or one on PATH, or None."""
    beside = Path(sys.executable).with_name("py-spy")
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


def start_record(executable: str, pid: int, duration_s: int, output: Path) -> subprocess.Popen[bytes]:
    """Start `py-spy record` on a process, which stops by itself after `duration_s`."""
    command = [
        executable, "record",
        "--pid", str(pid),
        "--duration", str(duration_s),
        "--rate", str(SAMPLE_RATE_HZ),
        "--format", "speedscope",
        "--output", str(output),
        # Sampling without pausing the target keeps its overhead low. A stack may then
        # mix two moments, which a summary over thousands of samples tolerates.
        "--nonblocking",
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def dump(executable: str, pid: int, output: Path) -> str | None:
    """Write one `py-spy dump` of every thread's stack to `output`, and return an error or None."""
    result = subprocess.run([executable, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=60)
    output.write_text(result.stdout + result.stderr, encoding="utf-8")
    if result.returncode != 0:
        return f"py-spy dump exited with {result.returncode}: {result.stderr.strip()[-300:]}"
    return None


def thread_cpu_seconds(pid: int) -> dict[int, tuple[str, float]]:
    """Return the OS thread name and CPU seconds (user and system) of each thread of a process."""
    threads: dict[int, tuple[str, float]] = {}
    try:
        listed = psutil.Process(pid).threads()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return threads

    for thread in listed:
        try:
            name = Path(f"/proc/{pid}/task/{thread.id}/comm").read_text().strip()
        except OSError:
            name = "?"
        threads[thread.id] = (name, thread.user_time + thread.system_time)
    return threads


def thread_cores(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], elapsed_s: float) -> dict[int, tuple[str, float]]:
    """Return each thread's CPU use between two `thread_cpu_seconds` readings, in cores."""
    cores = {}
    for tid, (name, cpu_s) in after.items():
        used_s = cpu_s - before.get(tid, (name, 0.0))[1]
        cores[tid] = (name, max(0.0, used_s) / elapsed_s)
    return cores


def summarize(profile: ProcessProfile, speedscope_path: Path, cores_by_thread: dict[int, tuple[str, float]], top: int = 10) -> None:
    """Fill `profile` with the CPU of each package group and frame, weighted per thread.

    Each thread's CPU use is split over its samples in proportion; a thread without
    samples goes to a group named after its OS thread name.
    """
    document = json.loads(speedscope_path.read_text(encoding="utf-8"))
    frames = document["shared"]["frames"]
    by_group: Counter[str] = Counter()
    by_frame: Counter[str] = Counter()
    sampled_tids: set[int] = set()

    for thread_profile in document["profiles"]:
        stacks = [stack for stack in thread_profile["samples"] if stack]
        match = SPEEDSCOPE_THREAD.match(thread_profile.get("name", ""))
        if not stacks or match is None:
            continue
        tid = int(match.group(1))
        sampled_tids.add(tid)
        profile.samples += len(stacks)
        cores = cores_by_thread.get(tid, ("?", 0.0))[1]

        # Every sample has the same weight (1 / rate, in seconds), so samples are counted.
        for stack in stacks:
            # Speedscope stacks run from the outermost frame to the innermost one.
            innermost = frames[stack[-1]]
            caller = _innermost_package_frame(frames, stack)
            by_group[_group_of(caller, innermost)] += cores / len(stacks)
            by_frame[_sample_label(innermost, caller)] += cores / len(stacks)

    for tid, (name, cores) in cores_by_thread.items():
        if tid not in sampled_tids and cores > 0:
            by_group[f"threads without Python samples: {_thread_family(name)}"] += cores

    profile.recorded_cores = sum(cores for _, cores in cores_by_thread.values())
    profile.cores_by_group = dict(by_group.most_common())
    profile.cores_by_frame = by_frame.most_common(top)


def _thread_family(name: str) -> str:
    """Return an OS thread name without its trailing number, so that a pool's threads group together."""
    return re.sub(r"[-_.:]?\d+$", "", name) or name


def _innermost_package_frame(frames: list[dict[str, object]], stack: list[int]) -> dict[str, object] | None:
    for index in reversed(stack):
        path = str(frames[index].get("file") or "")
        if not _is_standard_library(path):
            return frames[index]
    return None


def _is_standard_library(path: str) -> bool:
    if path.startswith("<frozen") or not path:
        return True
    return bool(STANDARD_LIBRARY.search(path)) and "site-packages" not in path


def _group_of(caller: dict[str, object] | None, innermost: dict[str, object]) -> str:
    if caller is not None:
        path = str(caller.get("file") or "")
        for group, fragments in PACKAGE_GROUPS:
            if any(fragment in path for fragment in fragments):
                return group
        return "other packages"

    path = str(innermost.get("file") or "")
    for group, fragments in STANDARD_GROUPS:
        if any(fragment in path for fragment in fragments):
            return group
    return "other standard library"


def _sample_label(innermost: dict[str, object], caller: dict[str, object] | None) -> str:
    label = _frame_label(innermost)
    if caller is not None and caller is not innermost:
        label += f" ← {caller.get('name', '?')} ({_short_path(str(caller.get('file') or ''))})"
    return label


def _frame_label(frame: dict[str, object]) -> str:
    name = str(frame.get("name", "?"))
    path = str(frame.get("file") or "")
    line = frame.get("line")
    short = _short_path(path)
    return f"{name} ({short}:{line})" if line else f"{name} ({short})"


def _short_path(path: str) -> str:
    """Return the path from the package folder on, such as ray/serve/_private/router.py."""
    for marker in ("site-packages/", str(PROJECT_ROOT) + "/"):
        if marker in path:
            return path.split(marker, 1)[1]
    standard_library = STANDARD_LIBRARY.search(path)
    if standard_library:
        return path[standard_library.end() :]
    parts = Path(path).parts
    return "/".join(parts[-3:]) if parts else path


def _slug(text: str) -> str:
    return "".join(char if char.isalnum() else "-" for char in text.lower()).strip("-")


def _profile_dict(profile: ProcessProfile) -> dict[str, Any]:
    return {
        "pid": profile.pid,
        "role": profile.role,
        "cpu_cores": profile.cpu_cores,
        "recorded_cores": profile.recorded_cores,
        "samples": profile.samples,
        "cores_by_group": profile.cores_by_group,
        "cores_by_frame": profile.cores_by_frame,
        "speedscope": str(profile.speedscope_path) if profile.speedscope_path else None,
        "dump": str(profile.dump_path) if profile.dump_path else None,
        "error": profile.error,
    }
