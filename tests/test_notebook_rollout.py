"""notebooks/03_climate_rollout.ipynb runs top to bottom at small size and shows its figures."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "03_climate_rollout.ipynb"


def test_rollout_notebook_executes_with_fields_energy_spectra_and_crps(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "sciffusion.emulators.DYffusion" in text and "CRPS at lead 1" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3, "the field, energy/spectrum and CRPS figures should be displayed"
