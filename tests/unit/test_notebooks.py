"""The committed notebooks run without error on a snapshot of a few hundred synthetic rows."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from feedbackbot.snapshot_settings import SnapshotSettings
from feedbackbot.snapshots import SnapshotPublisher
from feedbackbot.store import FeedbackStore
from tests.unit.snapshot_data import fill_store

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"
# Notebook -> the number of figures it draws.
NOTEBOOKS = {"exploration.ipynb": 4, "model_check.ipynb": 2}
CELL_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def snapshot_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A snapshot of 300 rows over 8 days, every rating, about one in ten without sentiment."""
    root = tmp_path_factory.mktemp("notebooks")
    store = FeedbackStore.open(root / "feedback.duckdb")
    publisher = SnapshotPublisher.open(SnapshotSettings(snapshot_dir=str(root / "snapshots")))
    records = fill_store(store, 300, days=8, seed=11)
    # Publish twice, so that the notebooks read a base file and a delta with newer row versions.
    publisher.publish(store._connection)
    store.record_enrichment_failure(
        [record.id for record in records if record.sentiment_label is None], error_text="model timed out"
    )
    publisher.publish(store._connection)
    publisher.close()
    store.close()
    return root / "snapshots"


@pytest.mark.parametrize("name", list(NOTEBOOKS))
def test_notebook_committed_without_outputs(name: str) -> None:
    notebook = nbformat.read(NOTEBOOK_DIR / name, as_version=4)

    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code_cells
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code_cells)


@pytest.mark.parametrize("name", list(NOTEBOOKS))
def test_notebook_runs_on_snapshot(
    name: str, snapshot_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEEDBACKBOT_SNAPSHOT_DIR", str(snapshot_folder))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    notebook = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    # IPC sockets in tmp_path instead of TCP ports, which other test stacks on this machine use.
    kernel = KernelManager(kernel_name="python3", transport="ipc", ip=str(tmp_path / "kernel"))
    client = NotebookClient(
        notebook, km=kernel, timeout=CELL_TIMEOUT_S, resources={"metadata": {"path": str(tmp_path)}}
    )

    client.execute()

    errors = [output for cell in notebook.cells for output in cell.get("outputs", []) if output.output_type == "error"]
    images = [output for cell in notebook.cells for output in cell.get("outputs", []) if "image/png" in output.get("data", {})]
    assert not errors
    assert len(images) == NOTEBOOKS[name]
