"""`devarray verify` and `devarray redo` (issue 12): damage is found and named by store, group,
variable and step, every command that meets it says so in one line, and a few checkpoints are
recomputed to the same bytes without touching the rest."""

import errno
import shutil

import numpy as np
import pytest
import xarray as xr
import zarr
from devarray.pipelines import hessian, llc, observe

from devarray import cli
from devarray.slt import sgld_settings
from devarray.store import RunStore
from devarray.verify import verify

SMALL = dict(batch_size=16, num_chains=2, num_draws=8, num_burnin_steps=1, epsilon=1e-4, localization=10.0)
STEPS = [0, 1, 2, 3]


@pytest.fixture(scope="module")
def analysed(tmp_path_factory, tiny_store):
    """The tiny run with its LLC curve, and Hessian and two observables at four checkpoints."""
    path = tmp_path_factory.mktemp("verify") / "run.zarr"
    shutil.copytree(tiny_store, path)
    llc.run(path, sgld_settings(**SMALL), dataset_size=64, progress=False, threads=1)
    hessian.run(path, batch_size=32, num_probes=4, top_k=2, num_lanczos=4, steps=STEPS, progress=False, threads=1)
    observe.run(path, ["attn_entropy", "icl_scores"], steps=STEPS, overwrite=True, progress=False, threads=1)
    return path


@pytest.fixture
def store(tmp_path, analysed):
    shutil.copytree(analysed, tmp_path / "run.zarr")
    return tmp_path / "run.zarr"


def corrupt(store, group, variable, step):
    """Overwrite the chunk holding ``step`` of ``group/variable`` with bytes that do not decode."""
    arr = zarr.open_array(str(store / group / variable), mode="r")
    i = RunStore.open(store, mode="r").index_of(group, step)
    key = "/".join(["c", str(i // arr.chunks[0])] + ["0"] * (arr.ndim - 1))
    (store / group / variable / key).write_bytes(b"not a zstd frame")


def run_cli(argv, capsys):
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def problems(store):
    return [p for r in verify(store) for p in r.problems]


def test_an_intact_store_verifies_clean(analysed, capsys):
    code, out, err = run_cli(["verify", analysed], capsys)
    assert code == 0, err
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert set(rows) >= {"params", "eval", "llc", "hessian", "observables", "train"}
    assert all(r[-1] == "ok" for r in rows.values())
    assert rows["llc"][1:3] == ["18", "18"] and rows["hessian"][1:3] == ["18", "4"]  # checkpoints, done
    # every chunk is read: the llc group's arrays over step have one chunk per checkpoint, coords one
    g = zarr.open_group(str(analysed / "llc"), mode="r")
    over_step = [k for k in g.array_keys() if g[k].metadata.dimension_names[0] == "step" and k != "step"]
    assert int(rows["llc"][3]) == 18 * len(over_step) + (len(list(g.array_keys())) - len(over_step))


def test_a_corrupt_chunk_is_named_by_store_group_variable_and_step(store, capsys):
    corrupt(store, "llc", "loss", 2)
    [p] = problems(store)
    assert (p.group, p.variable, p.steps, p.kind) == ("llc", "loss", [2], "undecodable")
    code, out, err = run_cli(["verify", store], capsys)
    assert code == 1 and f"{store}: llc/loss at step 2: cannot be decoded" in out
    assert f"devarray redo {store} llc --steps 2" in out


@pytest.mark.parametrize("argv", [["stages", "{S}"], ["figure", "{S}", "-o", "{T}/f.png"], ["redo", "{S}", "llc"]])
def test_every_command_that_meets_a_corrupt_chunk_names_it_in_one_line(store, tmp_path, capsys, argv):
    corrupt(store, "llc", "llc_mean", 3)
    argv = [a.replace("{S}", str(store)).replace("{T}", str(tmp_path)) for a in argv]
    if argv[0] == "redo":
        argv += ["--steps", "1", "--quiet"]  # another step of the damaged group: redo itself must not trip
        code, _, err = run_cli(argv, capsys)
        assert code == 0, err
        [p] = problems(store)
        assert p.steps == [3]
        return
    code, _, err = run_cli(argv, capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert f"{store}: llc/llc_mean at step 3: cannot be decoded" in err and "devarray redo" in err


@pytest.mark.parametrize(
    "group,variable", [("llc", "loss"), ("llc", "done"), ("hessian", "trace"), ("observables", "icl_1_D")]
)
def test_redo_recomputes_just_those_checkpoints_to_the_same_bytes(store, analysed, capsys, group, variable):
    corrupt(store, group, variable, 2)
    before = {p: p.read_bytes() for p in (store / group).rglob("*") if p.is_file() and "/c/2" not in str(p)}
    code, out, err = run_cli(["redo", store, group, "--steps", "2", "--quiet"], capsys)
    assert code == 0, err
    assert problems(store) == []
    a = xr.open_zarr(analysed, group=group, consolidated=False).load()
    b = xr.open_zarr(store, group=group, consolidated=False).load()
    xr.testing.assert_identical(a, b)
    after = {p: p.read_bytes() for p in before}
    assert after == before  # the other checkpoints' chunks were not rewritten


def test_redo_of_a_refined_group_keeps_its_restrictions(store, capsys):
    llc.run(
        store,
        sgld_settings(**SMALL),
        dataset_size=64,
        steps=[0, 1],
        restrictions=["all", "head 0.0"],
        overwrite=True,
        progress=False,
        threads=1,
    )
    before = xr.open_zarr(store, group="llc", consolidated=False).load()
    corrupt(store, "llc", "llc_mean", 1)
    code, _, err = run_cli(["redo", store, "llc", "--steps", "1", "--quiet"], capsys)
    assert code == 0, err
    xr.testing.assert_identical(xr.open_zarr(store, group="llc", consolidated=False).load(), before)


def test_not_finite_at_a_done_step_is_reported_but_an_all_diverged_llc_is_not(store):
    s = RunStore.open(store)
    s.array("hessian", "trace")[s.index_of("hessian", 1)] = np.nan
    i = s.index_of("llc", 2)
    s.array("llc", "llc_mean")[i] = np.nan  # by design where every chain diverged
    s.array("llc", "all_diverged")[i] = True
    [p] = problems(store)
    assert (p.group, p.variable, p.kind, p.steps) == ("hessian", "trace", "not finite", [1])


def test_a_result_with_another_fingerprint_is_reported_and_not_counted(store):
    s = RunStore.open(store)
    s.array("llc", "settings_id")[s.index_of("llc", 1)] = 12345
    [p] = problems(store)
    assert (p.kind, p.steps) == ("other settings", [1])
    assert next(r for r in verify(store) if r.group == "llc").done == 17


def test_lost_group_metadata_is_reported(store, capsys):
    (store / "hessian" / "zarr.json").unlink()
    [p] = problems(store)
    assert (p.group, p.kind) == ("hessian", "damaged metadata")
    code, _, err = run_cli(["redo", store, "hessian", "--steps", "1"], capsys)
    assert code == 2 and "damaged" in err and "--overwrite" in err


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["redo", "{S}", "params", "--steps", "1"], "written by training"),
        (["redo", "{S}", "stages", "--steps", "1"], "devarray stages"),
        (["redo", "{S}", "nope", "--steps", "1"], "choose llc, hessian or observables"),
        (["redo", "{S}", "llc", "--steps", "7"], "not written checkpoints"),
        (["redo", "{S}", "llc", "--steps", "x"], "comma-separated integers"),
        (["redo", "{S}", "llc"], "--steps"),
        (["redo", "/nonexistent.zarr", "llc", "--steps", "1"], "nonexistent"),
        (["verify", "/nonexistent.zarr"], "nonexistent"),
    ],
)
def test_redo_and_verify_refuse_bad_input_in_one_line(store, capsys, argv, needle):
    before = {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()}
    code, _, err = run_cli([a.replace("{S}", str(store)) for a in argv], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err
    assert {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("err_no", [errno.ENOSPC, errno.EROFS])
@pytest.mark.parametrize(
    "argv",
    [
        ["redo", "{S}", "llc", "--steps", "1", "--quiet"],
        ["redo", "{S}", "hessian", "--steps", "1", "--quiet"],
        ["observe", "{S}", "attn_entropy", "--steps", "5", "--quiet"],
        ["stages", "{S}"],
    ],
)
def test_a_full_or_read_only_disk_is_one_line_and_loses_nothing(store, capsys, monkeypatch, err_no, argv):
    """The file system refuses every write (as a full disk or a read-only mount would): the
    command says so in one line and what was done stays done."""
    done_before = {g: RunStore.open(store).done_steps(g).tolist() for g in ("llc", "hessian")}

    async def refuse(self, key, *a, **k):
        raise OSError(err_no, "simulated", str(self.root / key))

    monkeypatch.setattr(zarr.storage.LocalStore, "set", refuse)
    monkeypatch.setattr(zarr.storage.LocalStore, "delete", refuse)
    code, _, err = run_cli([a.replace("{S}", str(store)) for a in argv], capsys)
    monkeypatch.undo()
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "disk has space" in err or "writable" in err
    after = {g: RunStore.open(store).done_steps(g).tolist() for g in ("llc", "hessian")}
    assert after == done_before, (after, done_before)
    assert problems(store) == []
