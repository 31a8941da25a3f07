"""The settings seam: registry, setting_for, stores of unknown settings or newer schemas."""

import subprocess
import sys

import numpy as np
import pytest
import torch
import zarr

from devarray.errors import ConfigError, StoreError
from devarray.settings import get, names, setting_for
from devarray.store import SCHEMA_VERSION, RunStore


def test_registry_names_the_settings_and_refuses_unknown_ones():
    assert {"lr", "lm"} <= set(names())
    with pytest.raises(ConfigError, match="unknown setting 'xx'; choose one of: .*lm .*lr ") as err:
        get("xx")
    assert "in-context linear regression" in str(err.value) and "attention-only language model" in str(err.value)
    with pytest.raises(ConfigError, match="does not know"):
        setting_for({"setting": "quantum"})


def test_store_root_names_its_setting(tiny_store):
    store = RunStore.open(tiny_store, mode="r")
    assert store.root.attrs["setting"] == store.config["setting"] == "lr"
    assert setting_for(store.config) is get("lr")
    assert store.group("eval").attrs["schema"] == get("lr").eval_schema


def test_store_written_by_a_newer_schema_gets_one_line(tmp_path, tiny_store):
    import shutil

    path = tmp_path / "new.zarr"
    shutil.copytree(tiny_store, path)
    root = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    root.attrs["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(StoreError, match="newer devarray .* upgrade devarray"):
        RunStore.open(path)
    res = subprocess.run([sys.executable, "-m", "devarray.cli", "info", str(path)], capture_output=True, text=True)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr


def test_unknown_setting_in_a_store_gets_one_line(tmp_path, tiny_store):
    import shutil

    path = tmp_path / "alien.zarr"
    shutil.copytree(tiny_store, path)
    root = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    root.attrs["config"] = {**root.attrs["config"], "setting": "alien"}
    res = subprocess.run([sys.executable, "-m", "devarray.cli", "hessian", str(path)], capture_output=True, text=True)
    assert res.returncode == 2 and "setting 'alien'" in res.stderr and "Traceback" not in res.stderr


def test_train_help_and_error_list_the_settings():
    res = subprocess.run([sys.executable, "-m", "devarray.cli", "train", "--help"], capture_output=True, text=True)
    for name in names():
        assert f"{name}: {get(name).title}" in " ".join(res.stdout.split())
    res = subprocess.run([sys.executable, "-m", "devarray.cli", "train", "nope"], capture_output=True, text=True)
    assert res.returncode == 2 and "unknown setting 'nope'; choose one of:" in res.stderr and "lr (" in res.stderr


def test_library_errors_name_arguments_and_the_cli_maps_them_to_flags(tiny_store):
    with pytest.raises(ConfigError, match="^num_steps must be positive") as err:
        get("lr").config("tiny", num_steps=0)
    assert err.value.argument == "num_steps"
    res = subprocess.run(
        [sys.executable, "-m", "devarray.cli", "llc", str(tiny_store), "--dataset-size", "8"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2 and "--dataset-size (8) is smaller than the SGLD batch" in res.stderr, res.stderr
    # the parser's own checks come first, in one line too
    res = subprocess.run(
        [sys.executable, "-m", "devarray.cli", "train", "lr", "--steps", "0"], capture_output=True, text=True
    )
    assert (
        res.returncode == 2 and res.stderr == "devarray: error: train: argument --steps: 0 is not a positive integer\n"
    )


def test_init_model_is_seeded_and_leaves_the_global_rng_alone():
    s = get("lr")
    cfg = s.config("tiny", seed=3).to_dict()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b = s.init_model(cfg), s.init_model(cfg)
    assert torch.equal(torch.get_rng_state(), before)
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), k
    other = s.init_model(s.config("tiny", seed=4).to_dict())
    assert not torch.equal(next(other.parameters()), next(a.parameters()))


def test_setting_data_are_fixed_streams():
    s = get("lr")
    cfg = s.config("tiny").to_dict()
    for fetch in (lambda: s.sgld_dataset(cfg, 8), lambda: s.hessian_batch(cfg, 8), lambda: s.train_batch(cfg, 5)):
        first, again = fetch(), fetch()
        assert all(torch.equal(x, y) for x, y in zip(first, again))
    assert not torch.equal(s.sgld_dataset(cfg, 8)[0], s.hessian_batch(cfg, 8)[0])
    assert not torch.equal(s.train_batch(cfg, 5)[0], s.train_batch(cfg, 6)[0])
    ev = s.evaluator(cfg)
    assert set(ev.coords) == {"k"} and np.array_equal(ev.coords["k"], np.arange(1, 9))


def test_lr1_lr2_check_accepts_the_end_of_lr1_and_refuses_the_llc_maximum():
    import xarray as xr

    from devarray.settings.regression import lr1_lr2_check, lr1_lr2_report

    steps = np.array([0, 10, 50, 100, 200, 400, 1000, 3000, 6000])
    loss = np.array([9.0, 5.0, 4.4, 4.31, 4.30, 4.0, 3.0, 2.2, 2.0])  # reaches the zero predictor's 4.3, then falls
    ev = xr.Dataset({"test_loss": ("step", loss)}, coords={"step": steps}, attrs={"zero_predictor_loss": 4.3})

    def stages(*b):
        return xr.Dataset({"boundary_step": ("boundary", list(b)), "boundary_kind": ("boundary", ["plateau"] * len(b))})

    good = lr1_lr2_check(stages(200, 3000), ev)
    assert good["ok"] and good["first_step_below"] == 400
    assert "the end of LR1" in lr1_lr2_report(good)
    at_max = lr1_lr2_check(stages(1000, 3000), ev)  # inside LR2: the loss has left the zero predictor
    assert not at_max["ok"] and "NOT the LR1 -> LR2" in lr1_lr2_report(at_max)
    assert not lr1_lr2_check(stages(10), ev)["ok"]  # before the loss reached the zero predictor
