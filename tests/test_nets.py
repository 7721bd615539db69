"""Backbones: shapes, symmetry of periodic axes, errors, spec round trip, conditioning."""

import json

import pytest
import torch

from sciffusion.nets import NETS, PeriodicConv1d, UNet2d, build_net, net_spec

SMALL = dict(channels=[8, 16], blocks_per_level=1, num_heads=2, groups=4)


def _perturb_output_layer(net, seed=0):
    """Give the zero-initialised final conv random weights so the output depends on the input."""
    gen = torch.Generator().manual_seed(seed)
    conv = net.conv_out.conv if isinstance(net, UNet2d) else net.conv_out
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * 0.1)
        conv.bias.copy_(torch.randn(conv.bias.shape, generator=gen) * 0.1)
    return net


def _unet(**kw):
    torch.manual_seed(0)
    return _perturb_output_layer(UNet2d(**{**dict(in_channels=2), **SMALL, **kw})).eval()


def _conv1d(**kw):
    torch.manual_seed(0)
    return _perturb_output_layer(
        PeriodicConv1d(**{**dict(in_channels=1, width=8, n_blocks=2, groups=4), **kw})).eval()


@pytest.mark.parametrize("padding", ["zeros", "circular", ("zeros", "circular")])
def test_unet_output_shape_matches_input_and_out_channels(padding):
    net = UNet2d(3, out_channels=2, cond_channels=1, padding=padding, **SMALL)
    y = net(torch.randn(2, 3, 8, 12), torch.randn(2), torch.randn(2, 1, 8, 12))
    assert y.shape == (2, 2, 8, 12)


def test_unet_zero_initialised_final_layer_outputs_zero():
    net = UNet2d(2, cond_channels=1, **SMALL)
    y = net(torch.randn(2, 2, 8, 8), torch.randn(2), torch.randn(2, 1, 8, 8))
    assert torch.count_nonzero(y) == 0


def test_conv1d_shape_and_zero_init():
    net = PeriodicConv1d(1, cond_channels=2, width=8, n_blocks=2, groups=4)
    y = net(torch.randn(4, 1, 40), torch.randn(4), torch.randn(4, 2, 40))
    assert y.shape == (4, 1, 40) and torch.count_nonzero(y) == 0


def test_scalar_c_noise_broadcasts_like_a_batch_of_equal_levels():
    net = _unet()
    x = torch.randn(3, 2, 8, 8)
    torch.testing.assert_close(net(x, torch.tensor(0.3)), net(x, torch.full((3,), 0.3)))


def test_periodic_unet_is_equivariant_to_rolls_along_circular_axes():
    # Shifts must be multiples of the down-sampling factor 2**(levels-1) = 2; c_noise fixed.
    net = _unet(cond_channels=1, padding="circular", attention_levels=[0, 1])
    x, cond, c = torch.randn(2, 2, 8, 12), torch.randn(2, 1, 8, 12), torch.randn(2)
    y = net(x, c, cond)
    for shifts, dims in [(2, -1), (4, -2), ((6, 2), (-2, -1))]:
        y_rolled = net(x.roll(shifts, dims), c, cond.roll(shifts, dims))
        torch.testing.assert_close(y_rolled, y.roll(shifts, dims), atol=1e-5, rtol=1e-4)


def test_mixed_padding_unet_is_periodic_only_along_the_circular_axis():
    net = _unet(padding=("zeros", "circular"))
    x, c = torch.randn(1, 2, 8, 8), torch.zeros(1)
    y = net(x, c)
    torch.testing.assert_close(net(x.roll(2, -1), c), y.roll(2, -1), atol=1e-5, rtol=1e-4)
    assert (net(x.roll(2, -2), c) - y.roll(2, -2)).abs().max() > 1e-3


def test_zero_padding_is_not_periodic():
    net = _unet(padding="zeros")
    x, c = torch.randn(1, 2, 8, 8), torch.zeros(1)
    diff = net(x.roll(2, -1), c) - net(x, c).roll(2, -1)
    assert diff.abs().max() > 1e-3


def test_conv1d_is_equivariant_to_every_cyclic_shift():
    net = _conv1d(cond_channels=1)
    x, cond, c = torch.randn(3, 1, 40), torch.randn(3, 1, 40), torch.randn(3)
    y = net(x, c, cond)
    for k in (1, 7, 39):
        torch.testing.assert_close(net(x.roll(k, -1), c, cond.roll(k, -1)), y.roll(k, -1),
                                   atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("hw, bad", [((10, 16), "H"), ((16, 10), "W")])
def test_grid_not_divisible_by_downsampling_factor_is_a_clear_error(hw, bad):
    net = UNet2d(1, channels=[8, 8, 8], blocks_per_level=1, groups=4)  # factor 4
    size = hw[0] if bad == "H" else hw[1]
    with pytest.raises(ValueError, match=rf"{bad} .*= {size} is not divisible .*factor 4"):
        net(torch.randn(1, 1, *hw), torch.zeros(1))


@pytest.mark.parametrize("make, shape", [
    (lambda: _unet(cond_channels=1, padding=["zeros", "circular"], attention_levels=[-1]),
     (2, 2, 8, 8)),
    (lambda: _conv1d(cond_channels=1, dilations=[1, 3]), (2, 1, 16)),
])
def test_spec_json_round_trip_rebuilds_a_net_with_identical_outputs(make, shape):
    net = make()
    spec = json.loads(json.dumps(net_spec(net)))
    clone = build_net(spec).eval()
    clone.load_state_dict(net.state_dict())
    x, cond, c = torch.randn(shape), torch.randn(shape[0], 1, *shape[2:]), torch.randn(shape[0])
    assert torch.equal(clone(x, c, cond), net(x, c, cond))
    assert net_spec(clone) == spec


def test_mlp_spec_round_trip_and_zero_init_output():
    """The MLP rebuilds from its spec with identical outputs, and starts at zero output."""
    from sciffusion.nets import MLP

    net = MLP(4, cond_features=2, width=16, depth=2)
    x, c, cond = torch.randn(3, 4), torch.randn(3), torch.randn(3, 2)
    assert torch.equal(net(x, c, cond), torch.zeros(3, 4))
    torch.nn.init.normal_(net.out.weight)
    clone = build_net(json.loads(json.dumps(net_spec(net))))
    clone.load_state_dict(net.state_dict())
    assert "MLP" in NETS and torch.equal(clone(x, c, cond), net(x, c, cond))
    assert not torch.allclose(net(x, c, cond), net(x, c, cond + 1))
    with pytest.raises(ValueError, match="cond"):
        net(x, c)


def test_build_net_rejects_unknown_names_listing_known_ones():
    with pytest.raises(ValueError, match="UNet2d") as err:
        build_net({"name": "os.system", "kwargs": {}})
    assert "PeriodicConv1d" in str(err.value)


def test_net_spec_rejects_modules_that_are_not_sciffusion_nets():
    with pytest.raises(ValueError, match="not a sciffusion backbone"):
        net_spec(torch.nn.Linear(2, 2))


def test_name_table_holds_the_backbones():
    assert {"UNet2d", "PeriodicConv1d"} <= set(NETS)


@pytest.mark.parametrize("net, shape", [(lambda: _unet(cond_channels=1), (2, 2, 8, 8)),
                                        (lambda: _conv1d(cond_channels=1), (2, 1, 16))])
def test_conditioning_changes_the_output(net, shape):
    net = net()
    x, c = torch.randn(shape), torch.randn(shape[0])
    cond = torch.randn(shape[0], 1, *shape[2:])
    assert (net(x, c, cond) - net(x, c, cond + 1.0)).abs().max() > 1e-3


def test_noise_level_changes_the_output():
    net = _unet()
    x = torch.randn(2, 2, 8, 8)
    assert (net(x, torch.full((2,), -1.0)) - net(x, torch.full((2,), 1.0))).abs().max() > 1e-3


def test_missing_or_unexpected_cond_is_a_clear_error():
    with pytest.raises(ValueError, match="cond_channels=1 but cond is None"):
        _unet(cond_channels=1)(torch.randn(1, 2, 8, 8), torch.zeros(1))
    with pytest.raises(ValueError, match="cond_channels=0"):
        _unet()(torch.randn(1, 2, 8, 8), torch.zeros(1), torch.randn(1, 1, 8, 8))


def test_conv1d_ring_shorter_than_its_padding_is_a_clear_error():
    net = PeriodicConv1d(1, width=8, n_blocks=3, kernel_size=5, dilations=[1, 4], groups=4)
    with pytest.raises(ValueError, match="K = 6 sites is fewer than the circular padding 8"):
        net(torch.randn(1, 1, 6), torch.zeros(1))


def test_bf16_input_keeps_the_noise_code_in_float32():
    from sciffusion.nets.unet import broadcast_noise

    c = broadcast_noise(torch.tensor([0.123456789]), 1, torch.zeros(1, dtype=torch.bfloat16))
    assert c.dtype == torch.float32 and c.item() == pytest.approx(0.123456789, rel=1e-7)


def test_parameter_counts_are_sane_and_grow_with_width():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    small = count(UNet2d(1, channels=[8, 16], blocks_per_level=1, groups=4, num_heads=2))
    default = count(UNet2d(1))
    assert 1e4 < small < 2e5
    assert 1e6 < default < 1e7
    assert 1e3 < count(PeriodicConv1d(1, width=16, n_blocks=2)) < 5e4


def test_gradients_reach_every_parameter():
    net = _unet(cond_channels=1)
    net(torch.randn(2, 2, 8, 8), torch.randn(2), torch.randn(2, 1, 8, 8)).square().sum().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing


@pytest.mark.parametrize("modes", [("zeros", "zeros"), ("circular", "circular"), ("reflect", "reflect"),
                                   ("zeros", "circular"), ("replicate", "zeros")])
@pytest.mark.parametrize("stride", [1, 2])
def test_padconv_equals_axis_by_axis_padding_then_unpadded_conv(modes, stride):
    """The fast paths (the conv's own zero padding; one F.pad for one mode on both axes) give
    what padding W, then H, by each axis' mode and an unpadded convolution give."""
    import torch.nn.functional as F

    from sciffusion.nets.unet import PADDING_MODES, PadConv2d

    torch.manual_seed(0)
    conv = PadConv2d(3, 4, 3, stride=stride, padding=modes)
    x = torch.randn(2, 3, 8, 10)
    ref = F.pad(x, (1, 1, 0, 0), mode=PADDING_MODES[modes[1]])
    ref = F.pad(ref, (0, 0, 1, 1), mode=PADDING_MODES[modes[0]])
    ref = F.conv2d(ref, conv.conv.weight, conv.conv.bias, stride=stride)
    torch.testing.assert_close(conv(x), ref, rtol=1e-6, atol=1e-6)


def test_groupnorm_in_bf16_under_autocast_matches_float32_norm():
    """Under bf16 autocast the U-Net's GroupNorm keeps bf16 (no float32 output) and agrees with
    the float32 normalisation to bf16 precision; outside autocast it is nn.GroupNorm exactly."""
    from sciffusion.nets.unet import GroupNorm

    torch.manual_seed(0)
    norm = GroupNorm(4, 16, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(2, 16, 8, 8) * 3 + 1
    ref = torch.nn.functional.group_norm(x, 4, norm.weight, norm.bias, 1e-6)
    torch.testing.assert_close(norm(x), ref)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = norm(x.bfloat16())
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref, rtol=0.02, atol=0.05)
    assert set(norm.state_dict()) == {"weight", "bias"}


def test_mlp_embeds_a_shared_noise_level_once_with_the_same_result_as_per_sample():
    """Sampling passes one noise level for the whole batch: the MLP embeds it once; each row must
    equal what the same row gives alone, and a batch of mixed levels must match row by row."""
    from sciffusion.nets import MLP

    torch.manual_seed(0)
    net = MLP(5, cond_features=3, width=32, depth=2)
    torch.nn.init.normal_(net.out.weight)  # zero-initialised output: give it weights so outputs differ
    x, cond = torch.randn(6, 5), torch.randn(6, 3)
    shared = net(x, torch.full((6,), 0.3), cond)
    rows = torch.cat([net(x[i : i + 1], torch.tensor([0.3]), cond[i : i + 1]) for i in range(6)])
    torch.testing.assert_close(shared, rows)
    torch.testing.assert_close(net(x, torch.tensor(0.3), cond), shared)
    levels = torch.linspace(-1, 1, 6)
    mixed = net(x, levels, cond)
    torch.testing.assert_close(mixed, torch.cat([net(x[i : i + 1], levels[i : i + 1], cond[i : i + 1]) for i in range(6)]))
    assert not torch.allclose(mixed, shared)


def test_channels_last_grad_is_the_identity_whose_gradient_comes_back_channels_last():
    """The U-Net's layout barrier: forward value unchanged, the gradient handed back channels-last (the
    gradient arriving here, as GroupNorm's backward writes it, is NCHW), NCHW tensors untouched, and a
    channels-last U-Net's loss and gradients equal to the NCHW one's."""
    from sciffusion.nets.unet import channels_last_grad

    x = torch.randn(2, 8, 5, 6).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = channels_last_grad(x)
    assert torch.equal(y, x) and y.grad_fn is not None
    g = torch.randn(2, 8, 5, 6)  # NCHW-contiguous, not channels-last
    y.backward(g)
    assert torch.equal(x.grad, g) and x.grad.is_contiguous(memory_format=torch.channels_last) and not x.grad.is_contiguous()
    plain = torch.randn(2, 8, 5, 6, requires_grad=True)
    assert channels_last_grad(plain) is plain

    torch.manual_seed(0)
    net = UNet2d(in_channels=1, channels=[8, 16], blocks_per_level=1, attention_levels=[], groups=4)
    with torch.no_grad():  # no zero-initialised output layer: every parameter gets a gradient
        for p in net.parameters():
            p.normal_(0, 0.2)
    inp = torch.randn(2, 1, 16, 16)
    grads = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        net.zero_grad()
        m = net.to(memory_format=fmt)
        m(inp.contiguous(memory_format=fmt), torch.zeros(2)).square().mean().backward()
        grads.append([p.grad.clone() for p in m.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert all(float(a.abs().max()) > 0 for a in grads[0])
