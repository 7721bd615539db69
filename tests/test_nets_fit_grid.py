"""UNet2d(fit_grid="pad"): grids that do not divide the down-sampling factor (real data such as
the 18 x 432 OSTIA grid) are padded - periodically along circular axes, by reflection otherwise -
and the output is cropped back."""

import pytest
import torch
import torch.nn.functional as F

from sciffusion.nets import UNet2d, build_net, net_spec


def make(fit_grid):
    torch.manual_seed(0)
    net = UNet2d(1, cond_channels=1, channels=[8, 16, 16], padding=("zeros", "circular"),
                 attention_levels=[], groups=4, fit_grid=fit_grid)
    torch.nn.init.normal_(net.conv_out.conv.weight)
    return net


def test_padded_forward_equals_manual_pad_then_crop():
    """18 x 30 with factor 4: rows reflect-padded 1+1, columns wrapped 1+1, output cropped."""
    padded, plain = make("pad"), make("error")
    plain.load_state_dict(padded.state_dict())
    x, c = torch.randn(2, 1, 18, 30), torch.randn(2, 1, 18, 30)
    out = padded(x, torch.zeros(2), c)
    assert out.shape == x.shape

    def pad(t):
        t = F.pad(t, [0, 0, 1, 1], mode="reflect")
        return F.pad(t, [1, 1, 0, 0], mode="circular")

    ref = plain(pad(x), torch.zeros(2), pad(c))[..., 1:19, 1:31]
    torch.testing.assert_close(out, ref)


def test_divisible_grid_is_untouched_and_error_mode_still_refuses():
    padded, plain = make("pad"), make("error")
    plain.load_state_dict(padded.state_dict())
    x, c = torch.randn(1, 1, 16, 32), torch.randn(1, 1, 16, 32)
    assert torch.equal(padded(x, torch.zeros(1), c), plain(x, torch.zeros(1), c))
    with pytest.raises(ValueError, match="not divisible by the down-sampling factor 4"):
        plain(torch.randn(1, 1, 18, 32), torch.zeros(1), torch.randn(1, 1, 18, 32))


def test_fit_grid_survives_the_spec_round_trip():
    net = make("pad")
    assert net_spec(net)["kwargs"]["fit_grid"] == "pad"
    assert build_net(net_spec(net)).fit_grid == "pad"
    assert "fit_grid" not in net_spec(make("error"))["kwargs"]
    with pytest.raises(ValueError, match="fit_grid"):
        UNet2d(1, fit_grid="crop")
