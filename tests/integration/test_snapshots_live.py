"""Snapshots of the live database: notebooks and the CLI read what the gateway just accepted.

Submissions go through the gateway. Once persistence has published them, both committed
notebooks run against the snapshot folder, and `feedbackbot query` and `feedbackbot export`
read it. The service keeps running and accepting submissions throughout.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import nbformat
import pytest
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from feedbackbot import analysis
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"
TEXTS = (
    "Fast delivery and a friendly courier, thank you!",
    "The parcel was fine, nothing special to report.",
    "It arrived broken and support never answered my emails.",
)


@pytest.fixture(scope="module")
def ingested(stack: Stack) -> dict[str, dict]:
    """Submit 60 feedbacks through the gateway and wait until a snapshot contains them all."""
    marker = uuid.uuid4().hex[:8]
    accepted: dict[str, dict] = {}
    with stack.client(stack.keys.submit) as client:
        for index in range(60):
            payload = {
                "customer_name": f"Snapshot reader {marker} {index}",
                "customer_email": f"reader.{marker}.{index}@example.com",
                "feedback_text": TEXTS[index % len(TEXTS)],
                "rating": 1 + index % 5,
            }
            response = client.post("/v1/feedback", json=payload)
            assert response.status_code == 201, response.text
            accepted[response.json()["id"]] = payload
            stack.accepted[response.json()["id"]] = {**payload, "request_id": response.headers["X-Request-ID"]}

    # The default freshness target is 10 s; the deadline leaves room for a slow machine.
    deadline = time.monotonic() + 60.0
    while True:
        found = snapshot_ids(stack.snapshot_dir) & set(accepted)
        if found == set(accepted) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert found == set(accepted), f"{len(accepted) - len(found)} accepted rows are missing from the snapshot"
    return accepted


def snapshot_ids(folder: Path) -> set[str]:
    try:
        connection = analysis.connect(folder)
    except analysis.SnapshotNotFound:
        return set()
    try:
        return {row[0] for row in connection.execute("SELECT id::VARCHAR FROM feedback").fetchall()}
    finally:
        connection.close()


@pytest.mark.parametrize("name", ["exploration.ipynb", "model_check.ipynb"])
def test_notebook_runs_on_live_snapshot(name: str, stack: Stack, ingested: dict, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FEEDBACKBOT_SNAPSHOT_DIR", str(stack.snapshot_dir))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    notebook = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    kernel = KernelManager(kernel_name="python3", transport="ipc", ip=str(tmp_path / "kernel"))
    client = NotebookClient(notebook, km=kernel, timeout=120, resources={"metadata": {"path": str(tmp_path)}})

    client.execute()

    errors = [output for cell in notebook.cells for output in cell.get("outputs", []) if output.output_type == "error"]
    assert errors == []


def run_cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "FEEDBACKBOT_SNAPSHOT_DIR": str(stack.snapshot_dir)}
    return subprocess.run(
        [sys.executable, "-m", "feedbackbot.cli", *args], env=environment, capture_output=True, text=True, timeout=120
    )


def test_query_counts_live_rows(stack: Stack, ingested: dict) -> None:
    marker = next(iter(ingested.values()))["customer_name"].rsplit(" ", 1)[0]

    result = run_cli(
        stack, "query", "--format", "csv", f"SELECT count(*) AS n FROM feedback WHERE customer_name LIKE '{marker} %'"
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines() == ["n", str(len(ingested))]


def test_export_csv_holds_live_rows(stack: Stack, ingested: dict, tmp_path: Path) -> None:
    output = tmp_path / "feedback.csv"

    result = run_cli(stack, "export", "--format", "csv", "--since", "2000-01-01", "--output", str(output))

    assert result.returncode == 0, result.stderr
    with output.open(newline="", encoding="utf-8") as handle:
        rows = {row["id"]: row for row in csv.DictReader(handle)}
    for feedback_id, payload in ingested.items():
        assert rows[feedback_id]["feedback_text"] == payload["feedback_text"]
        assert rows[feedback_id]["customer_email"] == payload["customer_email"]
