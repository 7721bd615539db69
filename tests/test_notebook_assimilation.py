"""notebooks/06_data_assimilation.ipynb runs sciffusion's filter beside a numpy stochastic EnKF on Lorenz-96,
shows the score figures, and resumes a killed run to the uninterrupted result."""

import re
from pathlib import Path

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "06_data_assimilation.ipynb"


def test_assimilation_notebook_tracks_the_truth_and_resumes_bit_for_bit(run_notebook):
    text, images = run_notebook(NOTEBOOK, {"SCIFFUSION_NB_CYCLES": 20}, timeout=300)
    assert len(images) >= 2, "the scores figure (RMSE/spread, rank histogram) and the time series should be displayed"
    rmse = {name: float(v) for name, v in re.findall(r"^(sciffusion|stochastic EnKF): RMSE ([\d.]+)", text, flags=re.M)}
    assert set(rmse) == {"sciffusion", "stochastic EnKF"}, text
    assert rmse["sciffusion"] < 0.6 and rmse["stochastic EnKF"] < 0.8, rmse  # well below the observation noise (1)
    assert "resumed run equals the uninterrupted run: True" in text
    assert "refused: cannot resume" in text and "seed" in text
