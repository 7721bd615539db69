"""notebooks/04_downscaling.ipynb runs top to bottom at small size and shows its figures and tables."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "04_downscaling.ipynb"


def test_downscaling_notebook_executes_with_figures_the_variance_table_and_scores(monkeypatch):
    monkeypatch.setenv("SCIFFUSION_NB_N_TRAJ", "2")
    monkeypatch.setenv("SCIFFUSION_NB_STEPS", "10")
    monkeypatch.setenv("SCIFFUSION_NB_MEMBERS", "4")
    monkeypatch.setenv("SCIFFUSION_NB_SPINUP", "200")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "fine {'time': 4, 'y': 32, 'x': 32} -> coarse {'time': 4, 'y': 8, 'x': 8}" in text
    assert "calibrated sampler: {'method': 'ddim'" in text and "ssr" in text
    assert "bicubic" in text and "diffusion (4 members)" in text
    assert "same members as before: True" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 4, "variance curve, field panels, spectra and rank histogram should be displayed"
