"""docs/mot_in_pictures.ipynb, the lesson in pictures: it runs top to bottom in a fresh kernel, as
Jupyter or Colab would (a cell that fails fails the test, naming it), and the copy in the
repository holds its outputs, the pictures included, so that it renders on GitHub. It trains two
tiny models for a few hundred steps: about two minutes on 2 CPU cores."""

import os

import pytest
from conftest import ROOT

nbformat = pytest.importorskip("nbformat", reason="pip install -r requirements-dev.txt")
nbclient = pytest.importorskip("nbclient", reason="pip install -r requirements-dev.txt")

NOTEBOOK = os.path.join(ROOT, "docs", "mot_in_pictures.ipynb")
PICTURES = ("heat-maps", "curves")  # the tags of the cells whose output is a picture


def pictures(notebook) -> dict:
    """For each tag of PICTURES, how many image/png outputs the cells so tagged hold."""
    return {tag: sum("image/png" in output.get("data", {})
                     for cell in notebook.cells if tag in cell.metadata.get("tags", [])
                     for output in cell.get("outputs", []))
            for tag in PICTURES}


def test_the_committed_notebook_holds_its_outputs():
    """Every code cell ran, in order, none with an error; the heat maps and the training curves
    are there as pictures; the first cell opens it in Colab."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1))
    assert not [output for cell in code for output in cell.outputs
                if output.output_type == "error"]
    assert all(n >= 1 for n in pictures(notebook).values()), pictures(notebook)
    assert "colab.research.google.com/github/" in notebook.cells[0].source


def test_the_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    """A fresh kernel runs every cell in docs/ (as Jupyter opens it), its temporary files under
    tmp_path; the pictures come out again."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the kernel's tempfile.mkdtemp
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = []
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}}).execute()
    assert all(n >= 1 for n in pictures(notebook).values()), pictures(notebook)
