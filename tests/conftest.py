"""Suite-wide settings: one torch thread per test (the tests use tiny tensors, where thread
start-up costs more than it saves and two processes on two cores would oversubscribe them),
and a headless matplotlib backend."""

import matplotlib
import pytest
import torch

matplotlib.use("Agg")


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def run_notebook(monkeypatch):
    """Execute a notebook top to bottom (one thread, ``env`` as environment variables) in its own
    folder; assert no cell raised; return ``(stream text, displayed PNG outputs)``."""

    def run(path, env=None, timeout=120):
        import nbformat
        from nbclient import NotebookClient

        for key, value in {**(env or {}), "OMP_NUM_THREADS": "1"}.items():
            monkeypatch.setenv(key, str(value))
        nb = nbformat.read(path, as_version=4)
        NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
        assert not [o for o in outputs if o.output_type == "error"]
        text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
        return text, [o for o in outputs if "image/png" in o.get("data", {})]

    return run
