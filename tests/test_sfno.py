"""SFNO backbone: equivariant to longitude rotation, shapes, zero-initialised output, JSON spec, clear ImportError."""

import sys

import pytest
import torch

pytest.importorskip("torch_harmonics")

from sciffusion.nets import SFNO, build_net, net_spec  # noqa: E402


def net(**kw):
    torch.manual_seed(0)
    n = SFNO(2, cond_channels=1, nlat=16, nlon=32, width=16, n_layers=2, **kw)
    torch.nn.init.normal_(n.proj.weight)  # the zero-initialised output would make every check trivial
    return n


def test_rolling_the_input_by_one_longitude_cell_rolls_the_output():
    n = net()
    x, c, s = torch.randn(3, 2, 16, 32), torch.randn(3, 1, 16, 32), torch.randn(3)
    y = n(x, s, cond=c)
    for shift in (1, 5):
        y_rolled = n(x.roll(shift, -1), s, cond=c.roll(shift, -1))
        torch.testing.assert_close(y_rolled, y.roll(shift, -1), atol=1e-4, rtol=1e-4)
    assert (y.roll(1, -2) - n(x.roll(1, -2), s, cond=c.roll(1, -2))).abs().max() > 1e-2  # latitude is not periodic


def test_shapes_round_trip_and_a_fresh_net_returns_zero():
    fresh = SFNO(3, out_channels=1, nlat=8, nlon=16, width=8, n_layers=1)
    y = fresh(torch.randn(2, 3, 8, 16), torch.zeros(2))
    assert y.shape == (2, 1, 8, 16) and y.abs().max() == 0
    with pytest.raises(ValueError, match=r"\(B, C, 8, 16\)"):
        fresh(torch.randn(2, 3, 8, 12), torch.zeros(2))
    with pytest.raises(ValueError, match="cond_channels=0"):
        fresh(torch.randn(2, 3, 8, 16), torch.zeros(2), cond=torch.randn(2, 1, 8, 16))


def test_spec_rebuilds_the_same_net():
    n = net()
    again = build_net(net_spec(n))
    again.load_state_dict(n.state_dict())
    x, c = torch.randn(2, 2, 16, 32), torch.randn(2, 1, 16, 32)
    torch.testing.assert_close(again(x, torch.ones(2), cond=c), n(x, torch.ones(2), cond=c))


def test_missing_torch_harmonics_gives_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_harmonics", None)
    with pytest.raises(ImportError, match=r"pip install --no-deps torch-harmonics==0\.9\.3"):
        SFNO(1, nlat=8, nlon=16)
