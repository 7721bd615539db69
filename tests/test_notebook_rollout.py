"""notebooks/03_climate_rollout.ipynb runs top to bottom at small size and shows its figures."""

from pathlib import Path


NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "03_climate_rollout.ipynb"


def test_rollout_notebook_executes_with_fields_energy_spectra_and_crps(run_notebook):
    text, images = run_notebook(NOTEBOOK, timeout=180)
    assert "sciffusion.emulators.DYffusion" in text and "CRPS at lead 1" in text
    assert len(images) >= 3, "the field, energy/spectrum and CRPS figures should be displayed"
