"""Load tuning inside the deployments: model workers, the group wait under load, the sender's priority."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from deployments.ingest import GROUP_MAX_SIZE, GROUP_WAIT_S, Ingest
from feedbackbot.sentiment import join_shares, split_for_workers
from feedbackbot.settings import IngestSettings


def test_split_for_workers_covers_every_text_once() -> None:
    texts = ["x" * length for length in (50, 3, 17, 9, 41, 1, 28, 33, 5, 12, 60)]

    shares = split_for_workers(texts, batch_size=2, workers=3)

    assert len(shares) == 3
    assert sorted(index for share in shares for index in share) == list(range(len(texts)))


def test_split_for_workers_deals_passes_in_turn() -> None:
    # Sorted by length the passes of 2 are [0, 1], [2, 3], [4, 5], [6, 7], [8].
    texts = ["x" * (index + 1) for index in range(9)]

    shares = split_for_workers(texts, batch_size=2, workers=2)

    assert shares == [[0, 1, 4, 5, 8], [2, 3, 6, 7]]


def test_split_for_workers_leaves_out_empty_shares() -> None:
    assert split_for_workers(["short", "longer text"], batch_size=8, workers=4) == [[0, 1]]
    assert split_for_workers([], batch_size=8, workers=2) == []


def test_join_shares_restores_text_order() -> None:
    texts = ["x" * length for length in (7, 2, 9, 4, 1)]
    shares = split_for_workers(texts, batch_size=1, workers=2)
    share_scores = [[float(len(texts[index])) for index in share] for share in shares]

    assert join_shares(shares, share_scores, len(texts)) == [7.0, 2.0, 9.0, 4.0, 1.0]


def bare_ingest(settings: IngestSettings) -> Any:
    """An Ingest object without its handles: enough for the group wait, which touches no other deployment.

    Serve keeps a batch queue per decorated method, not per object, so each test sets the
    waits it checks through reconfigure or _count_in_flight.
    """
    ingest = Ingest.func_or_class.__new__(Ingest.func_or_class)
    ingest._settings = settings
    ingest._in_flight = 0
    ingest._busy = False
    return ingest


def group_waits(ingest: Any) -> set[float]:
    return {grouped._get_batch_wait_timeout_s() for grouped in ingest._groups()}


def test_group_wait_follows_in_flight() -> None:
    settings = IngestSettings(
        max_batch_size=GROUP_MAX_SIZE, batch_wait_timeout_s=0.002, busy_batch_wait_timeout_s=0.02, busy_in_flight=3
    )
    ingest = bare_ingest(settings)
    ingest.reconfigure(settings.model_dump())
    assert group_waits(ingest) == {0.002}

    for _ in range(2):
        ingest._count_in_flight(1)
    assert group_waits(ingest) == {0.002}

    ingest._count_in_flight(1)
    assert group_waits(ingest) == {0.02}

    ingest._count_in_flight(-1)
    assert group_waits(ingest) == {0.002}
    assert ingest._in_flight == 2


def test_reconfigure_keeps_the_busy_wait_in_force() -> None:
    ingest = bare_ingest(IngestSettings(max_batch_size=GROUP_MAX_SIZE, batch_wait_timeout_s=GROUP_WAIT_S, busy_in_flight=1))
    ingest._count_in_flight(1)

    ingest.reconfigure({"max_batch_size": 8, "busy_batch_wait_timeout_s": 0.05, "busy_in_flight": 1})

    assert group_waits(ingest) == {0.05}
    assert {grouped._get_max_batch_size() for grouped in ingest._groups()} == {8}


def run_in_child(script: str) -> str:
    # A scheduling policy cannot be raised again without privileges, so each check runs in a child process.
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=os.getcwd())
    return result.stdout.strip()


def test_idle_priority_covers_threads_started_afterwards() -> None:
    script = (
        "import os, threading\n"
        "from feedbackbot.notify import set_thread_cpu_priority\n"
        "seen = []\n"
        "print(set_thread_cpu_priority('idle'), os.sched_getscheduler(0) == os.SCHED_IDLE, end=' ')\n"
        "worker = threading.Thread(target=lambda: seen.append(os.sched_getscheduler(0) == os.SCHED_IDLE))\n"
        "worker.start(); worker.join()\n"
        "print(seen[0])\n"
    )

    assert run_in_child(script) == "idle True True"


def test_normal_priority_changes_nothing() -> None:
    script = (
        "import os\n"
        "from feedbackbot.notify import set_thread_cpu_priority\n"
        "before = os.sched_getscheduler(0)\n"
        "print(set_thread_cpu_priority('normal'), os.sched_getscheduler(0) == before)\n"
    )

    assert run_in_child(script) == "normal True"


@pytest.mark.parametrize(("key", "value"), [("busy_in_flight", 0), ("busy_batch_wait_timeout_s", -0.1)])
def test_ingest_settings_bounds_checked(key: str, value: float) -> None:
    with pytest.raises(ValueError, match=key):
        IngestSettings(**{key: value})
