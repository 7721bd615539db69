"""notebooks/01_ensemble_emulation.ipynb runs top to bottom at small size and shows its figures."""

from pathlib import Path


NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "01_ensemble_emulation.ipynb"


def test_ensemble_notebook_executes_with_figures_and_the_skill_table(run_notebook):
    text, images = run_notebook(NOTEBOOK, {"SCIFFUSION_NB_N_INIT": 2, "SCIFFUSION_NB_MEMBERS": 4, "SCIFFUSION_NB_STEPS": 3})
    assert "physics (31)" in text and "emulated (4)" in text and "temperature =" in text
    assert "dimension 'k' has size 36" in text
    assert len(images) >= 2, "the rank-histogram and spread-skill figures should be displayed"
