"""The processes of a running stack: their roles, memory (RSS and PSS) and CPU use.

A stack is given as root process ids (Ray's `ray start`, the Nginx master, the mail sink,
uvicorn); every descendant of a root belongs to it. Roles are read from process titles:
Ray names its actors `ray::ServeReplica:<app>:<deployment>`, `ray::ProxyActor` and so on.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psutil

REPLICA_TITLE = re.compile(r"^ray::ServeReplica:[^:]+:([A-Za-z0-9_]+)")
ACTOR_ROLES = {
    "ProxyActor": "Serve proxy",
    "ServeController": "Serve controller",
    "DashboardAgent": "Ray dashboard agent",
    "RuntimeEnvAgent": "Ray runtime env agent",
    "IDLE": "Ray idle worker",
}
SCRIPT_ROLES = (
    ("ray/dashboard/dashboard.py", "Ray dashboard"),
    ("ray/_private/log_monitor.py", "Ray log monitor"),
    ("ray/autoscaler/_private/monitor.py", "Ray autoscaler monitor"),
    ("ray.util.client.server", "Ray client server"),
    ("multiprocessing.forkserver", "Ray dashboard forkserver"),
    ("multiprocessing.resource_tracker", "multiprocessing resource tracker"),
    ("feedbackbot.mailsink", "mail sink"),
    ("bench.baseline_app", "baseline app (uvicorn)"),
)


def role_of(process: psutil.Process) -> str:
    """Return a readable role for a process of the stack, such as "replica Enrichment"."""
    try:
        command = process.cmdline()
        name = process.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return "exited"

    title = command[0] if command else name
    replica = REPLICA_TITLE.match(title)
    if replica:
        return f"replica {replica.group(1)}"
    if title.startswith("ray::"):
        actor = title.removeprefix("ray::").split(".")[0]
        return ACTOR_ROLES.get(actor, f"Ray actor {actor}")
    if title.startswith("ray-dashboard-"):
        return "Ray dashboard module " + title.split(" ")[0].removeprefix("ray-dashboard-")
    if title.startswith("nginx: master"):
        return "Nginx master"
    if title.startswith("nginx: worker"):
        return "Nginx worker"
    if name in ("gcs_server", "raylet"):
        return {"gcs_server": "Ray GCS server", "raylet": "raylet"}[name]

    joined = " ".join(command)
    if "ray start" in joined or joined.endswith("/ray") or "bin/ray start" in joined:
        return "ray start (launcher)"
    for fragment, role in SCRIPT_ROLES:
        if fragment in joined:
            return role
    return name


def process_tree(roots: Iterable[int]) -> list[psutil.Process]:
    """Return each live root and all its descendants."""
    found: dict[int, psutil.Process] = {}
    for pid in roots:
        try:
            root = psutil.Process(pid)
            members = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for member in members:
            found[member.pid] = member
    return list(found.values())


@dataclass(frozen=True)
class MemoryRow:
    """One process's resident memory. PSS is None when it was not read."""

    pid: int
    role: str
    rss_bytes: int
    pss_bytes: int | None = None


def memory_snapshot(roots: Iterable[int], *, with_pss: bool = True) -> list[MemoryRow]:
    """Read RSS (and PSS, which splits shared pages between processes) of every process now."""
    rows = []
    for process in process_tree(roots):
        try:
            if with_pss:
                info = process.memory_full_info()
                rows.append(MemoryRow(process.pid, role_of(process), info.rss, info.pss))
            else:
                rows.append(MemoryRow(process.pid, role_of(process), process.memory_info().rss))
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return sorted(rows, key=lambda row: (row.role, row.pid))


class PeakMemorySampler:
    """Samples the RSS of a stack's processes in a thread and keeps each process's peak."""

    def __init__(self, roots: Iterable[int], interval_s: float = 1.0) -> None:
        self._roots = list(roots)
        self._interval_s = interval_s
        self._peaks: dict[int, MemoryRow] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_until_stopped, name="rss-sampler", daemon=True)

    def __enter__(self) -> "PeakMemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def peaks(self) -> list[MemoryRow]:
        return sorted(self._peaks.values(), key=lambda row: (row.role, row.pid))

    def _sample_until_stopped(self) -> None:
        while not self._stop.is_set():
            for row in memory_snapshot(self._roots, with_pss=False):
                earlier = self._peaks.get(row.pid)
                peak_bytes = max(row.rss_bytes, earlier.rss_bytes) if earlier else row.rss_bytes
                # The latest role wins: a Ray worker starts as "ray::IDLE" and becomes a replica.
                self._peaks[row.pid] = MemoryRow(row.pid, row.role, peak_bytes)
            self._stop.wait(self._interval_s)


@dataclass
class CpuUse:
    """CPU seconds per second (cores) over one interval: the whole machine and each process."""

    elapsed_s: float
    machine_busy_cores: float
    cores_by_process: dict[int, tuple[str, float]] = field(default_factory=dict)

    @property
    def stack_cores(self) -> float:
        return sum(cores for _, cores in self.cores_by_process.values())

    @property
    def other_cores(self) -> float:
        """Cores that processes outside the measured ones used, such as another test run."""
        return max(0.0, self.machine_busy_cores - self.stack_cores)

    def cores_by_role(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for role, cores in self.cores_by_process.values():
            totals[role] = totals.get(role, 0.0) + cores
        return dict(sorted(totals.items(), key=lambda item: -item[1]))


class CpuMeter:
    """Measures CPU time of the stack's processes, the caller and the whole machine over an interval.

    Processes that start during the interval (a replica added by the autoscaler) are
    found at the end, and all of their CPU time counts.
    """

    def __init__(self, roots: Iterable[int], *, include_self: bool = True) -> None:
        self._roots = list(roots)
        self._include_self = include_self
        self._started = 0.0
        self._machine_before: Any = None
        self._before: dict[int, float] = {}

    def start(self) -> None:
        self._started = time.monotonic()
        self._machine_before = psutil.cpu_times()
        self._before = {}
        for process in self._processes():
            cpu_s = _cpu_seconds(process)
            if cpu_s is not None:
                self._before[process.pid] = cpu_s

    def stop(self) -> CpuUse:
        elapsed_s = time.monotonic() - self._started
        machine_after = psutil.cpu_times()
        usage = CpuUse(elapsed_s=elapsed_s, machine_busy_cores=_busy_seconds(self._machine_before, machine_after) / elapsed_s)

        for process in self._processes():
            cpu_s = _cpu_seconds(process)
            if cpu_s is None:
                continue
            used_s = cpu_s - self._before.get(process.pid, 0.0)
            role = "load generator (this process)" if process.pid == psutil.Process().pid else role_of(process)
            usage.cores_by_process[process.pid] = (role, used_s / elapsed_s)
        return usage

    def _processes(self) -> list[psutil.Process]:
        processes = process_tree(self._roots)
        if self._include_self:
            processes.append(psutil.Process())
        return processes


def _cpu_seconds(process: psutil.Process) -> float | None:
    try:
        times = process.cpu_times()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    return times.user + times.system


def _busy_seconds(before: Any, after: Any) -> float:
    """Return the CPU seconds that all cores spent outside idle and I/O wait between two psutil.cpu_times()."""
    idle_fields = {"idle", "iowait"}
    # guest time is already counted in user time on Linux.
    skipped = idle_fields | {"guest", "guest_nice"}
    busy = 0.0
    for name in after._fields:
        if name not in skipped:
            busy += getattr(after, name) - getattr(before, name)
    return busy


def python_pids(processes: Iterable[psutil.Process]) -> list[int]:
    """Return the ids of the processes whose executable is a Python interpreter (py-spy can read those)."""
    pids = []
    for process in processes:
        try:
            executable = process.exe()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if executable.rsplit("/", 1)[-1].startswith("python"):
            pids.append(process.pid)
    return pids
