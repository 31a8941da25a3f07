import pytest

from devarray import cli
from devarray.store import RunStore


def snapshot(path):
    """Modification times of every file of a store."""
    return {p: p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_demo_runs_end_to_end_and_a_rerun_finds_everything_done(tmp_path, capsys):
    # the demo's wiring on the tiny preset, whose tiny sampler presets take seconds
    argv = ["demo", "--preset", "tiny", "--out-dir", str(tmp_path), "--quiet"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    path = tmp_path / "lr-tiny-s0.zarr"
    store = RunStore.open(path)
    for group in ("params", "eval", "llc", "hessian"):
        assert len(store.done_steps(group)) == 18, group
    assert store.has_group("stages") and (tmp_path / "lr-tiny-s0.png").stat().st_size > 10_000
    assert "stages of" in out and "panel serve apps/stages.py" in out and "Δllc_mean" in out
    before = snapshot(path)
    assert cli.main(argv) == 0
    again = capsys.readouterr().out
    assert "is complete: step 100" in again
    assert snapshot(path) == before  # nothing recomputed, nothing rewritten


def test_figure_command_requires_stores(tmp_path, capsys):
    assert cli.main(["figure", str(tmp_path / "none.zarr"), "-o", str(tmp_path / "f.png")]) == 2
    assert "not a run store" in capsys.readouterr().err
