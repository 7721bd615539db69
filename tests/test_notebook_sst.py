"""notebooks/05_real_sst_downscaling.ipynb runs top to bottom at small size on the real OSTIA file
and shows its calibration table, score table and map figure."""

from pathlib import Path

import pytest

pytest.importorskip("iris_sample_data", reason="real-data wheel from the test extra")
NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "05_real_sst_downscaling.ipynb"


def test_sst_notebook_executes_with_the_score_table_land_kept_nan_and_the_maps(run_notebook):
    text, images = run_notebook(NOTEBOOK, {"SCIFFUSION_NB_STEPS": 3, "SCIFFUSION_NB_MEMBERS": 3,
                                           "SCIFFUSION_NB_SAMPLER_STEPS": 2})
    assert "fine {'time': 54, 'latitude': 18, 'longitude': 432" in text and "'latitude': 6, 'longitude': 144" in text
    assert "land 26% of the points" in text and "longitude 0.0..359.2 degrees_east" in text
    assert "fit 33 months, validation 12, test 9" in text
    assert "calibrated sampler: {'method': 'ddim'" in text
    assert "diffusion (3 members)" in text and "bicubic" in text and "nearest" in text and "CRPS" in text
    assert "land points NaN in every member: 100.0%; ocean points with a value: 100.0%" in text
    assert "'units': 'K', 'standard_name': 'surface_temperature'" in text
    assert len(images) >= 1, "the map figure (truth, coarse, ensemble mean, spread) should be displayed"
