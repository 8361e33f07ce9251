"""The example notebooks run top to bottom (nbclient, a fresh kernel each) without errors, on
real MNIST, each within its time budget on this CPU."""

from __future__ import annotations

import os
import time

import pytest

from helpers import REPO, SHARED_MNIST

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
NOTEBOOKS = sorted((REPO / "examples").glob("*.ipynb"))
# Each runs in well under 90 s on a quiet 2-core CPU (docs/examples.md has the measured times);
# the cell timeout is looser so that a loaded CI machine does not fail on time alone.
CELL_TIMEOUT_S = 600


def test_there_are_the_three_notebooks():
    assert [p.name for p in NOTEBOOKS] == ["01_quickstart.ipynb", "02_inside_capsules.ipynb",
                                           "03_results.ipynb"]
    for path in NOTEBOOKS:   # committed without outputs: they are run here, not stored
        cells = nbformat.read(path, as_version=4).cells
        assert all(not c.get("outputs") for c in cells if c.cell_type == "code"), path.name


@pytest.mark.skipif(not (SHARED_MNIST / "train-images-idx3-ubyte.gz").exists(),
                    reason=f"the notebooks train on real MNIST, not found in {SHARED_MNIST}")
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, monkeypatch, tmp_path):
    monkeypatch.setenv("EFFCN_DATA", str(SHARED_MNIST))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    print(f"{path.name}: {seconds:.0f} s")
