"""Sweeps (issue 16): a grid of runs trained and analysed on one dask cluster, failures reported
per run, the same command resuming with nothing recomputed; several stores submitted together."""

import logging

import numpy as np
import pytest
from devarray.pipelines import runner, sweep

from devarray.cli import main
from devarray.errors import ConfigError
from devarray.store import RunStore, StoreError, open_runs


def test_seeds_take_ranges_and_lists():
    assert sweep.parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert sweep.parse_seeds("0-2,9,1") == [0, 1, 2, 9]
    for bad in ("4-1", "a", "-1", "0,,2"):
        with pytest.raises(ConfigError, match="--seeds"):
            sweep.parse_seeds(bad)


def test_set_takes_options_by_name_or_flag_typed_like_the_flag():
    assert sweep.parse_sets(["lr=0.001,0.003", "steps=50"], "lr") == {"lr": [0.001, 0.003], "num_steps": [50]}
    specs = sweep.grid("lr", "tiny", [0, 1], {"lr": [0.001, 0.003]}, "out")
    assert [s.name for s in specs] == [
        "lr-tiny-s0-lr0.001",
        "lr-tiny-s0-lr0.003",
        "lr-tiny-s1-lr0.001",
        "lr-tiny-s1-lr0.003",
    ]
    assert specs[1].config().schedule.lr == 0.003 and specs[1].location.url.endswith("lr-tiny-s0-lr0.003.zarr")


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--seeds", "3-1"], "--seeds"),
        (["--set", "lr=fast"], "are not all float"),
        (["--set", "depth=2"], "no training option 'depth'"),
        (["--set", "lr"], "KEY=V1,V2"),
        (["--preset", "huge"], "unknown preset 'huge'"),
        (["--pipelines", "llc,plots"], "unknown pipeline 'plots'"),
        (["--llc-preset", "nope"], "unknown LLC preset 'nope'"),
        (["--set", "lr=-1"], "lr must be positive"),
        (["--storage-options", "{bad"], "--storage-options is not valid JSON"),
    ],
)
def test_bad_sweep_input_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, argv, words):
    out = tmp_path / "runs"
    assert main(["sweep", "lr", "--out-dir", str(out), "--quiet", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err and "Traceback" not in err
    assert not out.exists()


def test_open_runs_refuses_mixed_settings_unless_asked(tmp_path):
    for name, setting in (("a", "lr"), ("b", "lm")):
        store = RunStore.create(tmp_path / f"{name}.zarr", {"setting": setting, "seed": 0})
        store.create_group("hessian", {"step": np.array([0, 10]), "eig": np.arange(2)})
    with pytest.raises(StoreError, match="differ in their settings .lr vs lm.; .*mixed=True"):
        open_runs(str(tmp_path / "*.zarr"), group="hessian")
    ds = open_runs([tmp_path / "a.zarr", tmp_path / "b.zarr"], group="hessian", mixed=True)
    assert ds.setting.values.tolist() == ["lr", "lm"]


def test_open_runs_outer_joins_schedules_with_the_done_mask(tmp_path):
    for name, steps in (("a", [0, 10, 20]), ("b", [0, 5, 20])):
        store = RunStore.create(tmp_path / f"{name}.zarr", {"setting": "lr", "seed": 0})
        store.create_group("hessian", {"step": np.array(steps), "eig": np.arange(2)})
        for s in steps:
            store.write("hessian", s, {"trace": float(s), "top_eigenvalues": [1.0, 0.5]})
            store.mark_done("hessian", s)
    ds = open_runs(str(tmp_path / "*.zarr"), group="hessian")
    assert ds.step.values.tolist() == [0, 5, 10, 20]
    assert ds.done.dtype == bool and ds.done.values.tolist() == [[True, False, True, True], [True, True, False, True]]
    assert np.isnan(ds.trace.sel(run="a", step=5)) and float(ds.trace.sel(run="b", step=5)) == 5.0


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.ERROR
        ) as cluster,
        Client(cluster) as c,
    ):
        yield c


@pytest.mark.slow
def test_sweep_runs_every_run_reports_a_bad_store_and_resumes_with_nothing_recomputed(tmp_path, client, capsys):
    specs = sweep.grid("lr", "tiny", [0, 1, 2], {"num_steps": [40]}, str(tmp_path))  # 40 steps: fast
    RunStore.create(specs[2].location, {"setting": "lr", "seed": 99})  # a bad store: another run's
    result = sweep.run_sweep(specs, client=client, pipelines=("llc", "stages"), progress=False)

    bad = specs[2].name
    assert list(result.errors) == [bad] and "different config" in result.errors[bad]
    n = len(specs[0].config().checkpoints())
    assert result.computed == {"train": 2, "llc": 2 * n, "stages": 2}
    table = result.table().splitlines()
    assert table[-1] == "2 of 3 runs ok, 1 failed"
    for spec, line in zip(specs[:2], table[1:3]):
        store = RunStore.open(spec.location, mode="r")
        steps = store.steps("params")
        assert list(store.done_steps("llc")) == list(steps)
        cells = line.split()
        assert cells[:5] == [spec.name, f"{n}/{n}", f"{n}/{n}", f"0/{n}", f"0/{n}"]
        assert cells[5] == f"{float(store.dataset('eval').test_loss.sel(step=steps[-1])):.4f}"
        assert cells[6] == f"{float(store.dataset('llc').llc_mean.sel(step=steps[-1])):.2f}"
        boundaries = [str(int(s)) for s in store.dataset("stages").boundary_step.values] or ["-"]
        assert cells[7:] == boundaries
    assert "FAILED train:" in table[3] and "different config" in table[3]

    # the same command again: nothing trained, nothing estimated, the stages left as they are
    status = main(
        ["sweep", "lr", "--preset", "tiny", "--seeds", "0-2", "--set", "steps=40", "--out-dir", str(tmp_path)]
        + ["--workers", "2", "--pipelines", "llc,stages", "--quiet"]
    )
    out = capsys.readouterr().out
    assert status == 1  # a run failed
    assert "computed now: 0 train, 0 llc, 0 stages tasks" in out
    assert "\n".join(table[1:]) in out

    # the B.4 table over the stores: the same matching as the library's
    from devarray.stages_across import across_table, match_runs

    paths = [str(s.location) for s in specs[:2]]
    assert main(["stages", "--across", *paths]) == 0
    runs = {s.name: RunStore.open(s.location, mode="r").dataset("stages").load() for s in specs[:2]}
    assert capsys.readouterr().out.strip() == across_table(match_runs(runs)).strip()
    assert main(["figure", *paths, "-o", str(tmp_path / "b3.png")]) == 0
    assert (tmp_path / "b3.png").stat().st_size > 10_000


@pytest.mark.slow
def test_several_stores_are_planned_first_and_submitted_in_one_batch(tmp_path, tiny_store, monkeypatch, capsys):
    import shutil

    paths = [tmp_path / "a.zarr", tmp_path / "b.zarr"]
    for p in paths:
        shutil.copytree(tiny_store, p)
    batches = []
    real = runner.run_jobs
    monkeypatch.setattr(runner, "run_jobs", lambda jobs, **kw: batches.append(len(jobs)) or real(jobs, **kw))
    argv = ["hessian", str(tmp_path / "*.zarr"), "--preset", "tiny", "--steps", "0,100", "--quiet"]
    assert main(argv) == 0
    assert batches == [2]  # one batch holding both stores' jobs
    for p in paths:
        assert list(RunStore.open(p, mode="r").done_steps("hessian")) == [0, 100]
    assert capsys.readouterr().out.count("over 2 checkpoints") == 2


@pytest.mark.slow
def test_a_sweep_whose_driver_is_killed_resumes_with_nothing_recomputed(tmp_path, capsys):
    """The driver and its cluster killed (SIGKILL) mid-LLC: the same command finishes only the
    checkpoints that were not done, and those that were keep their bytes."""
    import os
    import signal
    import subprocess
    import sys
    import time

    args = ["sweep", "lr", "--preset", "tiny", "--seeds", "0", "--set", "steps=8", "--out-dir", str(tmp_path)]
    args += ["--workers", "2", "--pipelines", "llc", "--llc-preset", "quick", "--quiet"]  # quick: seconds a checkpoint
    specs = sweep.grid("lr", "tiny", [0], {"num_steps": [8]}, str(tmp_path))
    n = len(specs[0].config().checkpoints())

    def done_llc() -> dict:
        out = {}
        for spec in specs:
            try:
                out[spec.name] = RunStore.open(spec.location, mode="r").done_steps("llc")
            except StoreError:
                out[spec.name] = []
        return out

    code = "import sys; from devarray.cli import main; sys.exit(main(sys.argv[1:]))"
    driver = subprocess.Popen([sys.executable, "-c", code, *args], start_new_session=True)
    deadline = time.monotonic() + 600
    while sum(len(s) for s in done_llc().values()) < 2:
        assert driver.poll() is None and time.monotonic() < deadline, "the sweep ended before it could be killed"
        time.sleep(0.2)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and every worker process of its cluster
    driver.wait()
    before = done_llc()
    n_done = sum(len(s) for s in before.values())
    assert 2 <= n_done < n
    untrained = sum(not sweep.trained(spec) for spec in specs)
    kept = {
        name: RunStore.open(spec.location, mode="r").dataset("llc").llc_trace.sel(step=steps).values
        for spec, (name, steps) in zip(specs, before.items())
        if len(steps)
    }

    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"computed now: {untrained} train, {n - n_done} llc tasks" in out
    for spec in specs:
        store = RunStore.open(spec.location, mode="r")
        assert list(store.done_steps("llc")) == list(store.steps("params"))
        if spec.name in kept:
            again = store.dataset("llc").llc_trace.sel(step=before[spec.name]).values
            np.testing.assert_array_equal(again, kept[spec.name])
    assert main(["verify", *(str(s.location) for s in specs)]) == 0
