import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import zarr

from devarray.checkpoints import load_model
from devarray.schedules import checkpoint_schedule
from devarray.settings.regression import PRESETS, RegressionRun, Schedule, onecycle_lr
from devarray.store import RunStore, StoreError
from devarray.train import TrainingDiverged, make_config, train

TRAIN = [sys.executable, "-m", "devarray.cli", "train", "lr"]


def arrays(path) -> dict[str, np.ndarray]:
    """Every array of a store, keyed by path, for bitwise comparison."""
    root = zarr.open_group(str(path), mode="r", use_consolidated=False)
    out = {}
    for gname in root.group_keys():
        g = zarr.open_group(str(path), path=gname, mode="r", use_consolidated=False)
        for name in g.array_keys():
            out[f"{gname}/{name}"] = g[name][...]
    return out


def assert_same_bytes(a, b):
    A, B = arrays(a), arrays(b)
    assert A.keys() == B.keys()
    for k in A:
        assert A[k].tobytes() == B[k].tobytes(), k


def test_paper_schedule_has_190_checkpoints():
    steps = checkpoint_schedule(500_000, 100, 100)
    assert len(steps) == 190
    assert steps[0] == 0 and steps[-1] == 500_000
    assert np.all(np.diff(steps) > 0)
    assert len(make_config("lr", "paper").checkpoints()) == 190


def test_onecycle_matches_pytorch_onecycle_linear():
    sched = Schedule(num_steps=400, n_linear=2, n_log=0)
    opt = torch.optim.Adam(torch.nn.Linear(1, 1).parameters(), lr=0.003)
    ref = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.003, total_steps=400, pct_start=0.5, anneal_strategy="linear", cycle_momentum=False
    )
    for step in range(400):
        assert onecycle_lr(step, sched) == pytest.approx(ref.get_last_lr()[0], rel=1e-12, abs=1e-15)
        opt.step()
        ref.step()
    assert onecycle_lr(199, sched) == pytest.approx(0.003)


def test_every_preset_uses_the_paper_architecture():
    for name in PRESETS:
        assert make_config("lr", name).to_dict()["model"] == RegressionRun().model.to_dict()


def test_store_contents(tiny_store):
    store = RunStore.open(tiny_store)
    steps = store.steps("params")
    assert list(store.done_steps("params")) == list(steps) == list(store.done_steps("eval"))
    ev = store.dataset("eval")
    assert ev.test_loss_k.dims == ("step", "k") and ev.sizes["k"] == 8
    np.testing.assert_allclose(ev.test_loss, ev.test_loss_k.mean("k"), rtol=1e-6)
    tr = store.dataset("train")
    assert tr.sizes["train_step"] == 100 and bool(tr.done.all())
    assert float(tr.lr.max()) == pytest.approx(0.003, rel=1e-3)
    # stored weights reproduce the stored evaluation
    model = load_model(store, int(steps[-1]))
    norm = torch.sqrt(sum((p.double() ** 2).sum() for p in model.parameters()))
    assert float(ev.weight_norm.isel(step=-1)) == pytest.approx(norm.item(), rel=1e-6)
    assert ev.attrs["zero_predictor_loss"] == pytest.approx(4.125, abs=0.25)


def test_same_seed_same_bytes(tmp_path, tiny_store):
    train(tmp_path / "again.zarr", make_config("lr", "tiny", seed=0), progress=False)
    assert_same_bytes(tmp_path / "again.zarr", tiny_store)


def test_other_seed_other_numbers(tmp_path, tiny_store):
    train(tmp_path / "s1.zarr", make_config("lr", "tiny", seed=1), progress=False)
    a = RunStore.open(tmp_path / "s1.zarr").read_params(0)["token_embedding.weight"]
    b = RunStore.open(tiny_store).read_params(0)["token_embedding.weight"]
    assert not np.array_equal(a, b)


@pytest.fixture(scope="module")
def reference_cli_store(tmp_path_factory):
    """An uninterrupted run made by the command line (same thread count as the killed one)."""
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    subprocess.run(TRAIN + ["--preset", "tiny", "--seed", "0", "--out", str(out), "--quiet"], check=True)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", [3, 11])
def test_sigkill_then_resume_gives_identical_store(tmp_path, reference_cli_store, kill_after):
    out = tmp_path / "killed.zarr"
    cmd = TRAIN + ["--preset", "tiny", "--seed", "0", "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            done = zarr.open_array(str(out / "params" / "done"), mode="r")[:]
            if done.sum() >= kill_after:
                break
        except Exception:
            pass
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = RunStore.open(out)
    assert 0 < len(partial.done_steps("params")) < len(partial.steps("params"))
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "resumed from step" in res.stdout
    assert_same_bytes(out, reference_cli_store)


def test_rerun_of_finished_store_is_a_no_op(tiny_store):
    summary = train(tiny_store, make_config("lr", "tiny", seed=0), progress=False)
    assert summary["steps_run"] == 0


def test_other_config_is_never_overwritten_without_flag(tmp_path, tiny_store):
    with pytest.raises(StoreError, match="different config"):
        train(tiny_store, make_config("lr", "tiny", seed=1), progress=False)
    assert RunStore.open(tiny_store).config["seed"] == 0


def test_divergence_stops_with_message_and_keeps_checkpoints(tmp_path):
    config = make_config("lr", "tiny", seed=0, lr=1e7)
    with pytest.raises(TrainingDiverged, match="lower lr") as err:
        train(tmp_path / "nan.zarr", config, progress=False)
    store = RunStore.open(tmp_path / "nan.zarr")
    done = store.done_steps("params")
    assert len(done) >= 1 and f"up to step {done[-1]}" in str(err.value)
    assert all(np.isfinite(store.read_params(int(s))["unembedding.bias"]).all() for s in done)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--preset", "huge"], "unknown preset 'huge'"),
        (["--steps", "-5"], "--steps: -5 is not a positive integer"),
        (["--seed", "-1"], "--seed: -1 is not a non-negative integer seed"),
        (["--out", "/proc/devarray-test.zarr"], "cannot create /proc/devarray-test.zarr"),
    ],
)
def test_bad_arguments_get_one_line_errors(args, message):
    res = subprocess.run(
        TRAIN + ["--preset", "tiny", *args, "--quiet"] if "--preset" not in args else TRAIN + [*args, "--quiet"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2
    assert message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert "Traceback" not in res.stderr


def test_mismatched_store_error_from_the_command_line(tiny_store):
    res = subprocess.run(
        TRAIN + ["--preset", "tiny", "--seed", "1", "--out", str(tiny_store)], capture_output=True, text=True
    )
    assert res.returncode == 2 and "--overwrite" in res.stderr and "Traceback" not in res.stderr
