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
