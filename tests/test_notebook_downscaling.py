"""notebooks/04_downscaling.ipynb runs top to bottom at small size and shows its figures and tables."""

from pathlib import Path


NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "04_downscaling.ipynb"


def test_downscaling_notebook_executes_with_figures_the_variance_table_and_scores(run_notebook):
    text, images = run_notebook(NOTEBOOK, {"SCIFFUSION_NB_N_TRAJ": 2, "SCIFFUSION_NB_STEPS": 10, "SCIFFUSION_NB_MEMBERS": 4,
                                           "SCIFFUSION_NB_SPINUP": 200})
    assert "fine {'time': 4, 'y': 32, 'x': 32} -> coarse {'time': 4, 'y': 8, 'x': 8}" in text
    assert "calibrated sampler: {'method': 'ddim'" in text and "ssr" in text
    assert "bicubic" in text and "diffusion (4 members)" in text
    assert "same members as before: True" in text
    assert len(images) >= 4, "variance curve, field panels, spectra and rank histogram should be displayed"
