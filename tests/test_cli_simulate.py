"""``sciffusion simulate``: writes a store that reopens, refuses clobbering, names bad input."""

import pytest
import xarray as xr

from sciffusion.cli import main


def test_simulate_lorenz96_writes_a_reopenable_zarr_and_resumes(tmp_path, capsys):
    out = tmp_path / "l96.zarr"
    argv = ["simulate", "lorenz96", "--members", "2", "--n-init", "2", "--n-leads", "3", "--spinup", "1",
            "--no-progress", "-o", str(out)]
    assert main(argv) == 0
    ds = xr.open_zarr(out, consolidated=False)
    assert ds.x.dims == ("init_time", "lead_time", "member", "k") and ds.sizes["member"] == 2
    assert "chunk_done" not in ds and "sciffusion_completed_blocks" not in ds.attrs  # complete: no internal record
    assert main(argv) == 2
    assert "exists" in capsys.readouterr().err
    assert main(argv + ["--resume"]) == 0
    assert main(argv + ["--overwrite", "--members", "3"]) == 0
    assert xr.open_zarr(out, consolidated=False).sizes["member"] == 3


def test_simulate_darcy_with_lognormal_coefficients(tmp_path):
    out = tmp_path / "d.zarr"
    assert main(["simulate", "darcy", "--members", "3", "--size", "12", "--kind", "lognormal", "--no-progress", "-o", str(out)]) == 0
    ds = xr.open_zarr(out, consolidated=False)
    assert set(ds.data_vars) >= {"a", "u"} and float(ds.a.min()) > 0


def test_unknown_system_is_rejected_with_the_choices(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["simulate", "burgers", "-o", "x.zarr"])
    assert exc.value.code == 2
    assert "invalid choice: 'burgers'" in capsys.readouterr().err


@pytest.mark.parametrize("extra,needle", [(["kolmogorov", "--size", "7"], "n (grid size)"),
                                          (["lorenz96", "--members", "0"], "--members"),
                                          (["darcy", "--forecast-forcing-error", "1"], "lorenz96 only")])
def test_bad_sizes_give_a_clear_error(tmp_path, capsys, extra, needle):
    assert main(["simulate", *extra, "--no-progress", "-o", str(tmp_path / "o.zarr")]) == 2
    assert needle in capsys.readouterr().err


def test_resume_and_overwrite_are_exclusive(tmp_path):
    with pytest.raises(SystemExit):
        main(["simulate", "darcy", "--resume", "--overwrite", "-o", str(tmp_path / "o.zarr")])


def test_simulate_shallow_water_writes_lat_lon_fields(tmp_path):
    pytest.importorskip("torch_harmonics")
    out = tmp_path / "swe.zarr"
    argv = ["simulate", "shallow-water", "--members", "2", "--size", "12", "--dt", "3600", "--n-leads", "1",
            "--lead-interval", "1", "--no-progress", "-o", str(out)]
    assert main(argv) == 0
    ds = xr.open_zarr(out, consolidated=False)
    assert ds.h.dims == ("init_time", "lead_time", "member", "lat", "lon") and ds.sizes["lon"] == 24


@pytest.mark.parametrize("system, k", [("poisson", 0.0), ("helmholtz", 1.0)])
def test_simulate_writes_diffusionpde_pairs_that_solve_their_pde(tmp_path, system, k):
    """Each stored (a, u) pair satisfies lap(u) + k^2 u = a on the interior to round-off."""
    import torch

    from sciffusion.physics import helmholtz_residual

    out = tmp_path / f"{system}.zarr"
    assert main(["simulate", system, "--members", "3", "--size", "16", "--no-progress", "-o", str(out)]) == 0
    ds = xr.open_zarr(out, consolidated=False)
    assert ds.u.dims[-2:] == ("y", "x") and ds.sizes["member"] == 3
    r = helmholtz_residual(torch.tensor(ds.a.values), torch.tensor(ds.u.values), k=k)
    assert float(r.abs().max()) < 1e-9 * float(abs(ds.a).max())


def test_dt_is_refused_for_a_stationary_pde(tmp_path, capsys):
    assert main(["simulate", "poisson", "--dt", "0.1", "--no-progress", "-o", str(tmp_path / "o.zarr")]) == 2
    assert "--dt does not apply to poisson" in capsys.readouterr().err
