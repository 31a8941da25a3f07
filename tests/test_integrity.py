"""Store integrity (issue 12): bad inputs end in one line and exit 2 with nothing written; faults
never leave a number under the wrong label."""

import math
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import xarray as xr
import zarr
from devarray.pipelines import llc, stages
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devarray import cli
from devarray.errors import StoreError
from devarray.slt import sgld_settings
from devarray.store import RunStore

SMALL = dict(batch_size=16, num_chains=2, num_draws=8, num_burnin_steps=1, epsilon=1e-4, localization=10.0)


def snapshot(path):
    return {p: p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()}


@pytest.fixture
def store(tmp_path, tiny_store):
    shutil.copytree(tiny_store, tmp_path / "run.zarr")
    return tmp_path / "run.zarr"


def _one_line_exit_2(argv, capsys):
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, (argv, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (argv, err)
    assert err.startswith("devarray: error:"), err
    return err


BAD_COUNT = st.one_of(st.integers(max_value=0).map(str), st.sampled_from(["nan", "inf", "1.5", "x", "", "-0.5"]))
BAD_POSITIVE = st.one_of(
    st.floats(max_value=0, allow_nan=False).map(repr), st.sampled_from(["nan", "inf", "-inf", "x", "1e999"])
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(option=st.sampled_from(["--chains", "--batch-size", "--dataset-size", "--threads"]), value=BAD_COUNT)
def test_llc_count_options_refuse_bad_values(tiny_store, capsys, option, value):
    before = snapshot(tiny_store)
    _one_line_exit_2(["llc", str(tiny_store), f"{option}={value}", "--quiet"], capsys)
    assert snapshot(tiny_store) == before


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    option=st.sampled_from(["--epsilon", "--nbeta", "--beta-tilde", "--localization", "--gamma-tilde"]),
    value=BAD_POSITIVE,
)
def test_llc_sampler_options_refuse_bad_values(tiny_store, capsys, option, value):
    before = snapshot(tiny_store)
    _one_line_exit_2(["llc", str(tiny_store), f"{option}={value}", "--quiet"], capsys)
    assert snapshot(tiny_store) == before


@pytest.mark.parametrize(
    "argv",
    [
        ["stages", "{S}", "--tolerance", "-1"],
        ["stages", "{S}", "--tolerance", "nan"],
        ["stages", "{S}", "--tolerance", "2"],
        ["stages", "{S}", "--variable", "llc/loss"],
        ["calibrate", "{S}", "--gamma-tilde", "nan"],
        ["calibrate", "{S}", "--epsilon=-1,0.001"],
        ["calibrate", "{S}", "--beta-tilde=-0.5"],
        ["calibrate", "{S}", "--draws", "-5"],
        ["calibrate", "{S}", "--chains", "0"],
        ["llc", "{S}", "--threads", "-1"],
        ["llc", "{S}", "--workers", "-3"],
        ["llc", "{S}", "--draws", "1"],
        ["llc", "{S}", "--steps", "0,999999"],
        ["llc", "{S}", "--steps", "a,b"],
        ["llc", "{S}", "--preset", "nope"],
        ["hessian", "{S}", "--num-probes", "0"],
        ["hessian", "{S}", "--top-k", "0"],
        ["hessian", "{S}", "--steps", "999999"],
        ["observe", "{S}", "icl_scores", "--steps", "999999"],
        ["observe", "{S}", "no_such_observable"],
        ["figure", "{S}", "-o", "fig.jpg"],
        ["train", "lr", "--out", "{S}/zarr.json/x.zarr", "--preset", "tiny"],
        ["train", "nope"],
        ["train", "lr", "--preset", "huge"],
        ["train", "lr", "--layers", "2"],
        ["info", "/nonexistent.zarr"],
        ["llc", "{S}", "--dataset-size", "8"],
    ],
)
def test_bad_inputs_one_line_nothing_written(store, capsys, tmp_path, argv):
    argv = [a.replace("{S}", str(store)) for a in argv]
    before = snapshot(store)
    _one_line_exit_2(argv + (["--quiet"] if argv[0] in ("llc", "hessian", "observe") else []), capsys)
    assert snapshot(store) == before
    assert not (tmp_path / "fig.jpg").exists() and not (tmp_path / "fig.jpg.png").exists()


# the fixed arguments each subcommand needs before its options (a new subcommand must be added)
BASE_ARGV = {
    "train": ["train", "lr", "--out", "{T}/new.zarr"],
    "llc": ["llc", "{S}"],
    "calibrate": ["calibrate", "{S}"],
    "observe": ["observe", "{S}"],
    "hessian": ["hessian", "{S}"],
    "stages": ["stages", "{S}"],
    "figure": ["figure", "{S}", "-o", "{T}/f.png"],
    "compare": ["compare", "{S}", "--from", "0", "--to", "100"],
    "demo": ["demo", "--out-dir", "{T}/demo"],
    "app": ["app", "{S}"],
    "info": ["info", "{S}"],
    "verify": ["verify", "{S}"],
    "redo": ["redo", "{S}", "llc", "--steps", "0"],
    "sweep": ["sweep", "lr", "--preset", "tiny", "--seeds", "0", "--out-dir", "{T}/sweep"],
}


def _typed_options():
    """(subcommand, flag, bounds) of every numeric option of every subcommand, from the parser."""
    import argparse

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == set(BASE_ARGV), "add the new subcommand to BASE_ARGV"
    out = []
    for command, p in sub.choices.items():
        for action in p._actions:
            bounds = getattr(action.type, "bounds", None)
            if action.option_strings and (bounds or action.type is cli._positive_list):
                out.append((command, max(action.option_strings, key=len), bounds))
    return out


TYPED = _typed_options()


@st.composite
def bad_value(draw, bounds):
    """A value the option's type must refuse: out of its bounds, not finite, or not a number."""
    junk = st.sampled_from(["nan", "inf", "-inf", "x", "", "1e999", "0x10"])
    if bounds is None:  # a list of positive numbers
        return draw(st.one_of(junk, st.floats(max_value=0, allow_nan=False).map(lambda v: f"0.1,{v!r}")))
    kind, low, low_ok, high, high_ok = bounds
    options = [junk]
    if kind is int:
        options.append(st.sampled_from(["1.5", "2e0", "one"]))
    if low is not None:
        below = low if not low_ok else low - (1 if kind is int else 1e-9)
        options.append(
            st.integers(max_value=int(math.floor(below))).map(str)
            if kind is int
            else st.floats(max_value=below, allow_nan=False, allow_infinity=False).map(repr)
        )
    if high is not None:
        above = high if not high_ok else high + 1e-9
        options.append(st.floats(min_value=above, allow_nan=False, allow_infinity=False).map(repr))
    return draw(st.one_of(options))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_numeric_option_of_every_subcommand_refuses_bad_values(tiny_store, tmp_path_factory, capsys, data):
    """Generated from the parser: each subcommand's every numeric option, given a value its type
    refuses, exits 2 with one line before anything is written."""
    command, flag, bounds = data.draw(st.sampled_from(TYPED))
    value = data.draw(bad_value(bounds))
    out = tmp_path_factory.mktemp("bad")
    argv = [a.replace("{S}", str(tiny_store)).replace("{T}", str(out)) for a in BASE_ARGV[command]]
    before = snapshot(tiny_store)
    err = _one_line_exit_2([*argv, f"{flag}={value}"], capsys)
    assert flag in err
    assert snapshot(tiny_store) == before and not any(out.iterdir())


def _commands_with(flag: str) -> list[str]:
    import argparse

    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return [c for c, p in sub.choices.items() if any(flag in a.option_strings for a in p._actions)]


@pytest.mark.parametrize("command", [c for c in _commands_with("--steps") if c != "train"])  # train's is a count
@pytest.mark.parametrize("steps", ["999999", "0,7", "x", "1;2", "-1"])
def test_every_steps_option_refuses_steps_that_are_not_checkpoints(store, tmp_path, capsys, command, steps):
    argv = [a.replace("{S}", str(store)).replace("{T}", str(tmp_path)) for a in BASE_ARGV[command]]
    argv = [a for i, a in enumerate(argv) if a != "--steps" and (i == 0 or argv[i - 1] != "--steps")]
    before = snapshot(store)
    err = _one_line_exit_2([*argv, f"--steps={steps}", "--quiet"], capsys)
    assert "--steps" in err or "steps" in err
    assert snapshot(store) == before


def test_typed_options_cover_every_subcommand_that_takes_numbers():
    commands = {c for c, _, _ in TYPED}
    assert {"train", "llc", "calibrate", "hessian", "stages", "compare", "demo", "redo"} <= commands
    assert len(TYPED) >= 30


def test_calibrate_out_that_exists_is_refused_before_any_work(store, tmp_path, capsys):
    out = tmp_path / "grid.zarr"
    out.mkdir()
    t0 = time.perf_counter()
    err = _one_line_exit_2(["calibrate", str(store), "--out", str(out)], capsys)
    assert "already exists" in err and time.perf_counter() - t0 < 30


def test_read_only_store_is_refused_before_any_work(store, capsys):
    import os

    if os.geteuid() == 0:
        pytest.skip("root writes anywhere; the check is os.access")
    store.chmod(0o555)
    try:
        _one_line_exit_2(["hessian", str(store)], capsys)
    finally:
        store.chmod(0o755)


def test_second_writer_of_a_group_stops_at_once_naming_the_holder(store):
    code = (
        "import sys, time; from devarray.store import RunStore\n"
        "s = RunStore.open(sys.argv[1])\n"
        "with s.writing('llc'):\n    print('held', flush=True); time.sleep(30)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(store)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        res = subprocess.run(
            [sys.executable, "-m", "devarray.cli", "llc", str(store), "--quiet", "--steps", "0"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert res.returncode == 2 and f"being written by pid {holder.pid}" in res.stderr, res.stderr
        assert "--wait" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    finally:
        holder.kill()
        holder.wait()
    # the holder was killed: its lock is stale and the next writer takes it
    llc.run(store, sgld_settings(**SMALL), dataset_size=64, steps=[0], progress=False, threads=1)
    assert list(RunStore.open(store).done_steps("llc")) == [0]


def test_a_step_written_under_other_settings_is_not_done(store):
    llc.run(store, sgld_settings(**SMALL), dataset_size=64, steps=[0, 1], progress=False, threads=1)
    s = RunStore.open(store)
    assert list(s.done_steps("llc")) == [0, 1]
    # a writer that still held the old settings writes step 2 after the group changed (the race of
    # issue 12): its fingerprint differs from the group's, so the step is not done for anyone
    old_id = int(s.array("llc", "settings_id")[s.index_of("llc", 0)])
    llc.run(
        store,
        sgld_settings(**{**SMALL, "epsilon": 2e-4}),
        dataset_size=64,
        steps=[0],
        overwrite=True,
        progress=False,
        threads=1,
    )
    s = RunStore.open(store)
    i = s.index_of("llc", 2)
    s.array("llc", "settings_id")[i] = old_id
    s.array("llc", "done")[i] = True
    assert list(s.done_steps("llc")) == [0]
    ds = xr.open_zarr(store, group="llc", consolidated=False)
    from devarray.pipelines.runner import done

    assert list(done(ds).step.values) == [0]
    # and the pipeline recomputes it under the group's settings
    llc.run(store, sgld_settings(**{**SMALL, "epsilon": 2e-4}), dataset_size=64, steps=[2], progress=False, threads=1)
    assert list(RunStore.open(store).done_steps("llc")) == [0, 2]


def test_overwrite_clears_done_flags_before_the_settings_change(store, monkeypatch):
    llc.run(store, sgld_settings(**SMALL), dataset_size=64, steps=[0, 1], progress=False, threads=1)
    seen = []
    real = RunStore.clear_done

    def spy(self, group, steps=None):
        seen.append(dict(self.group(group).attrs)["epsilon"])  # the attrs still the old ones
        return real(self, group, steps)

    monkeypatch.setattr(RunStore, "clear_done", spy)
    llc.run(
        store,
        sgld_settings(**{**SMALL, "epsilon": 2e-4}),
        dataset_size=64,
        steps=[0],
        overwrite=True,
        progress=False,
        threads=1,
    )
    assert seen == [1e-4]


def test_lost_group_metadata_is_refused_not_repaired(store):
    llc.run(store, sgld_settings(**SMALL), dataset_size=64, steps=[0, 1], progress=False, threads=1)
    (store / "llc" / "zarr.json").unlink()
    for _ in range(2):
        with pytest.raises(StoreError, match="damaged .*zarr.json is missing.*--overwrite"):
            llc.run(
                store,
                sgld_settings(**{**SMALL, "epsilon": 2e-4}),
                dataset_size=64,
                steps=[0],
                progress=False,
                threads=1,
            )
    llc.run(
        store,
        sgld_settings(**{**SMALL, "epsilon": 2e-4}),
        dataset_size=64,
        steps=[0],
        overwrite=True,
        progress=False,
        threads=1,
    )
    ds = xr.open_zarr(store, group="llc", consolidated=False)
    assert ds.attrs["epsilon"] == 2e-4 and list(ds.step.values[ds.done.values]) == [0]


def test_metadata_disagreeing_with_the_consolidated_copy_is_reported(store):
    llc.run(store, sgld_settings(**SMALL), dataset_size=64, steps=[0], progress=False, threads=1)
    g = zarr.open_group(str(store / "llc"), mode="r+", use_consolidated=False)
    g.attrs["epsilon"] = 0.5  # changed behind the store's back
    assert "llc" in RunStore.open(store).damaged_groups()
    with pytest.raises(StoreError, match="disagrees with the consolidated"):
        llc.run(store, sgld_settings(**SMALL), dataset_size=64, steps=[1], progress=False, threads=1)


def test_all_diverged_checkpoints_are_marked_and_left_out_of_stages(store):
    s = dict(SMALL, num_draws=6)
    llc.run(store, sgld_settings(**{**s, "epsilon": 10.0}), dataset_size=64, steps=[0, 1], progress=False, threads=1)
    llc.run(store, sgld_settings(**{**s, "epsilon": 10.0}), dataset_size=64, progress=False, threads=1)
    ds = xr.open_zarr(store, group="llc", consolidated=False)
    assert bool(ds.all_diverged.isel(step=ds.done.values).any())
    assert np.isnan(ds.llc_mean.values[ds.all_diverged.values]).all()
    if ds.all_diverged.values.all():
        with pytest.raises(StoreError, match="usable checkpoints are too few"):
            stages.run(store)
    else:
        out = stages.run(store)
        assert set(out.attrs["left_out_steps"]) == set(ds.step.values[ds.all_diverged.values].tolist())


def test_open_runs_keeps_done_boolean_across_schedules(tmp_path, tiny_store):
    from devarray import open_runs
    from devarray.train import make_config, train

    shutil.copytree(tiny_store, tmp_path / "lr-a.zarr")
    train(tmp_path / "lr-b.zarr", make_config("lr", "tiny", seed=1, num_steps=50), progress=False)
    ev = open_runs(str(tmp_path / "lr-*.zarr"), group="eval")
    assert ev.done.dtype == bool and not bool(ev.done.sel(run="lr-b", step=100))
    ev.isel(step=ev.done.all("run").values)  # the README's selection works
