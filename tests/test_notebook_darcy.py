"""notebooks/02_darcy_inverse.ipynb runs end to end at a small size, inverts a Darcy field and shows its figure."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "02_darcy_inverse.ipynb"
SMALL = """N = 16
N_TRAIN = 32
TRAIN_STEPS = 5
CASES = 1
SAMPLES = 2
STEPS = 4
SEED = 0"""


def test_darcy_inverse_notebook_executes_at_small_size_and_displays_its_figure(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = [c for c in nb.cells if c.cell_type == "code" and c.source.startswith("# parameters")]
    assert len(params) == 1, "the notebook needs one '# parameters' cell"
    params[0].source = "# parameters\n" + SMALL
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    for method in ("mmps", "residual", "solve"):
        line = next(ln for ln in outputs.splitlines() if ln.startswith(method))
        errs = [float(v) for v in line.replace(":", " ").split() if v.replace(".", "", 1).replace("e-", "", 1).isdigit()]
        assert errs and all(e == e and e < 1e6 for e in errs), line  # finite numbers were printed
    with pytest.raises(StopIteration):
        next(o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error")
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 1, "the truth / posterior mean / posterior std figure should be displayed"
