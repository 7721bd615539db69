"""notebooks/03_climate_rollout.ipynb shows a working rollout (the trained model kept in the repository stays on
the attractor with a sensible spread) and says plainly that its in-notebook toy training is too short."""

import re
from pathlib import Path

import nbformat

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "03_climate_rollout.ipynb"


def printed(text, name, pattern):
    line = next(ln for ln in text.splitlines() if ln.startswith(name) and re.search(pattern, ln))
    return [float(v) for v in re.search(pattern, line).groups()]


def test_rollout_notebook_shows_the_kept_model_on_the_attractor_and_the_toy_training_as_too_short(run_notebook):
    text, images = run_notebook(NOTEBOOK, {"SCIFFUSION_NB_LEADS": 20}, timeout=180)
    assert "sciffusion.emulators.DYffusion" in text and "CRPS at lead 1" in text
    assert len(images) >= 3, "the field, energy/spectrum and CRPS figures should be displayed"
    lo, hi = printed(text, "trained autoregressive", r"energy / physics over members and times: ([\d.]+) \.\. ([\d.]+)")
    assert 0.5 < lo and hi < 2.0, (lo, hi)  # every member's energy within 2x of the physics' at every time
    crps1, ssr = printed(text, "trained autoregressive", r"CRPS at lead 1: ([\d.]+).*mean spread-skill ([\d.]+)")
    assert crps1 < 0.3 and 0.5 < ssr < 2.0, (crps1, ssr)  # skilful at lead 1, spread matching the error
    markdown = " ".join(c.source for c in nbformat.read(NOTEBOOK, as_version=4).cells if c.cell_type == "markdown")
    markdown = " ".join(markdown.split())
    assert "too short to give a working emulator" in markdown
    assert "python benchmarks/rollout_kolmogorov.py --model ar --pattern --train-steps" in markdown
