"""notebooks/01_ensemble_emulation.ipynb runs top to bottom at small size and shows its figures."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "01_ensemble_emulation.ipynb"


def test_ensemble_notebook_executes_with_figures_and_the_skill_table(monkeypatch):
    monkeypatch.setenv("SCIFFUSION_NB_N_INIT", "2")
    monkeypatch.setenv("SCIFFUSION_NB_MEMBERS", "4")
    monkeypatch.setenv("SCIFFUSION_NB_STEPS", "3")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "physics (31)" in text and "emulated (4)" in text and "temperature =" in text
    assert "dimension 'k' has size 36" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2, "the rank-histogram and spread-skill figures should be displayed"
