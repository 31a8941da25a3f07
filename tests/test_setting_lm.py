"""The language setting on the generic trainer and pipelines: store layout, resume, corpus path."""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import xarray as xr
import zarr
from devarray.pipelines import hessian, llc, stages
from test_train import assert_same_bytes

from devarray.checkpoints import load_model
from devarray.settings import get
from devarray.settings.language import icl_score, lm_stage_check, lm_stage_report, next_token_loss
from devarray.slt import sgld_settings
from devarray.store import RunStore
from devarray.train import make_config, train

TRAIN = [sys.executable, "-m", "devarray.cli", "train", "lm", "--preset", "tiny", "--quiet"]


@pytest.fixture(scope="module")
def lm_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("lm") / "lm-tiny-s0.zarr"
    train(path, make_config("lm", "tiny"), progress=False)
    return path


def test_paper_preset_is_table_3_with_the_paper_parameter_counts():
    s = get("lm")
    two, one = s.config("paper"), s.config("paper", n_layers=1)
    assert s.build_model(two.to_dict()).n_params == 3_355_016
    assert s.build_model(one.to_dict()).n_params == 3_091_336
    sched = two.schedule
    assert (sched.lr, sched.weight_decay, sched.batch_size, sched.num_steps) == (1e-3, 0.05, 100, 50_000)
    assert two.to_dict()["optimizer"]["name"] == "AdamW" and s.learning_rate(40_000, two.to_dict()) == 1e-3
    steps = two.checkpoints()
    assert set(range(0, 50_001, 100)) <= set(steps.tolist())  # the paper analysed every 100 steps


def test_llc_presets_follow_a31_text(lm_store):
    s = get("lm")
    two = s.llc_presets_for(s.config("paper").to_dict())["paper"].settings()
    one = s.llc_presets_for(s.config("paper", n_layers=1).to_dict())["paper"].settings()
    assert (two.num_chains, two.num_steps, two.batch_size) == (20, 200, 100)
    assert two.epsilon == 1e-3 and two.localization == pytest.approx(100)
    assert one.epsilon == 3e-3 and one.localization == pytest.approx(300)
    assert two.nbeta == pytest.approx(100 / np.log(100)) == one.nbeta


def test_store_holds_transformer_lens_names_and_nats(lm_store):
    store = RunStore.open(lm_store)
    params = store.dataset("params")
    assert {"embed.W_E", "pos_embed.W_pos", "blocks.0.attn.W_Q", "ln_final.w", "unembed.b_U"} <= set(params)
    assert params["blocks.1.attn.W_Q"].dims == ("step", "head", "d_model", "d_head")
    ev = store.dataset("eval")
    assert ev.test_loss.attrs["units"] == "nats" and ev.attrs["schema"] == "eval_lm"
    h2, h1 = ev.attrs["bigram_entropy"], ev.attrs["unigram_entropy"]
    assert 0 < h2 < h1 < np.log(64)
    np.testing.assert_allclose(ev.test_loss.values, ev.test_loss_k.mean("k").values, rtol=1e-5)
    # the stored weights reproduce the stored test loss through the setting's own loss
    s = get("lm")
    model = load_model(store, int(store.steps("params")[-1]))
    tokens = s.evaluator(store.config).tokens
    with torch.no_grad():
        assert float(next_token_loss(model, tokens)) == pytest.approx(float(ev.test_loss[-1]), rel=1e-4)
    assert float(ev.test_loss[-1]) < float(ev.test_loss[0])  # it learns


def test_same_seed_same_bytes(tmp_path, lm_store):
    train(tmp_path / "again.zarr", make_config("lm", "tiny"), progress=False)
    assert_same_bytes(tmp_path / "again.zarr", lm_store)


@pytest.mark.slow
def test_sigkill_then_resume_gives_identical_store(tmp_path, lm_store):
    out = tmp_path / "killed.zarr"
    ref = tmp_path / "ref.zarr"
    subprocess.run(TRAIN + ["--out", str(ref)], check=True)
    proc = subprocess.Popen(TRAIN + ["--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            if zarr.open_array(str(out / "params" / "done"), mode="r")[:].sum() >= 4:
                break
        except Exception:
            pass
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    res = subprocess.run(TRAIN + ["--out", str(out)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "resumed from step" in res.stdout
    assert_same_bytes(out, ref)


def test_llc_hessian_and_stages_pipelines_serve_the_language_setting(tmp_path, lm_store):
    path = tmp_path / "run.zarr"
    shutil.copytree(lm_store, path)
    settings = sgld_settings(
        batch_size=8,
        num_chains=2,
        num_draws=20,
        num_burnin_steps=2,
        epsilon=1e-3,
        nbeta=8 / np.log(8),
        localization=100.0,
    )
    results = llc.run(path, settings, dataset_size=64, progress=False, threads=1)
    assert len(results) == len(RunStore.open(path).steps("params"))
    ds = xr.open_zarr(path, group="llc", consolidated=False)
    assert ds.attrs["loss"].startswith("per-token cross entropy") and ds.attrs["attention"] in ("sdpa", "explicit")
    assert np.isfinite(ds.llc_mean.values).all()
    hessian.run(path, batch_size=8, num_probes=4, top_k=2, num_lanczos=4, progress=False, threads=1)
    assert np.isfinite(xr.open_zarr(path, group="hessian", consolidated=False).trace.values).all()
    st = stages.run(path)
    assert list(st.curve.values) == ["llc_mean", "test_loss", "weight_norm"]


def test_sgld_loss_is_the_training_loss_and_sdpa_agrees_with_explicit(lm_store):
    s = get("lm")
    store = RunStore.open(lm_store)
    model = load_model(store, 60)
    (tokens,) = s.sgld_dataset(store.config, 8)
    explicit = s.loss(model, tokens)
    model.fused_attention = True
    torch.testing.assert_close(s.loss(model, tokens), explicit, rtol=1e-5, atol=1e-6)


def test_stage_check_reads_bigram_and_induction_boundaries():
    steps = np.array([0, 10, 100, 300, 1000, 3000, 9000])
    k = np.arange(1, 100)
    # loss reaches the bigram entropy (3.0) by step 300; late positions beat early ones from 3000
    loss = np.array([5.5, 5.0, 3.6, 3.05, 2.9, 2.7, 2.5])
    gap = np.array([0, 0, 0, 0, -0.02, -0.3, -0.6])
    per_k = loss[:, None] + gap[:, None] * ((k >= 90) - 0.1)[None]
    ev = xr.Dataset(
        {"test_loss": ("step", loss), "test_loss_k": (("step", "k"), per_k)},
        coords={"step": steps, "k": k},
        attrs={"bigram_entropy": 3.0, "unigram_entropy": 5.0},
    )
    assert float(icl_score(ev).sel(step=9000)) == pytest.approx(-0.6, abs=1e-9)
    good = xr.Dataset({"boundary_step": ("boundary", [300, 4000]), "boundary_kind": ("boundary", ["plateau", "min"])})
    c = lm_stage_check(good, ev)
    assert c["ok"] and c["induction_step"] == 3000 and c["induction_boundary"] == 4000
    early = good.assign(boundary_step=("boundary", [100, 4000]))
    assert not lm_stage_check(early, ev)["ok"]  # loss 3.6 at step 100 is far from the bigram entropy
    # a boundary where the loss is still at the unigram entropy ends an earlier stage, not LM1
    three = xr.Dataset({"boundary_step": ("boundary", [10, 300, 4000])})
    c = lm_stage_check(three, ev)
    assert c["ok"] and c["unigram_boundary"] == 10 and c["boundary_step"] == 300
    assert lm_stage_report(c).startswith(
        "boundary at step 10 ends a unigram stage (test loss near the unigram entropy 5.000); next boundary at step "
        "300: test loss 3.050, bigram entropy 3.000 (unigram 5.000) — bigram statistics learned (end of LM1)"
    )
    late = lm_stage_check(three.assign(boundary_step=("boundary", [10, 9000])), ev)
    assert late["unigram_boundary"] == 10 and not late["bigram_ok"]  # loss 2.5 at 9000 is well past it
    far = good.assign(boundary_step=("boundary", [300, 20000]))
    assert not lm_stage_check(far, ev)["ok"]  # no boundary within a factor 2 of induction
    none = lm_stage_check(good.isel(boundary=slice(0, 0)), ev)
    assert not none["ok"] and none["induction_step"] == 3000
    assert lm_stage_report(none) == (
        "no stage boundary found on this LLC curve; induction forms at step 3000 (ICL score < −0.1; -0.600 at the end)"
    )
    corpus = ev.copy()
    corpus.attrs = {}  # a corpus run: no exact entropies, nothing to judge by
    assert lm_stage_report(lm_stage_check(good, corpus)) is None


def test_bad_language_options_get_one_line(tmp_path):
    for args, message in [
        (["--layers", "3"], "--layers must be 1 or 2"),
        (["--num-tasks", "4"], "the lm setting has no option --num-tasks"),
        (["--tokenizer", "t.json"], "--tokenizer needs a corpus"),
    ]:
        res = subprocess.run(TRAIN + ["--out", str(tmp_path / "x.zarr"), *args], capture_output=True, text=True)
        assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr, res.stderr
        assert not (tmp_path / "x.zarr").exists()


def test_training_on_a_local_corpus_tokenises_it_beside_the_store(tmp_path):
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", "away", "home"]
    lines = [" ".join(rng.choice(words, size=30)) for _ in range(400)]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(lines))
    out = tmp_path / "c.zarr"
    cmd = [
        sys.executable,
        "-m",
        "devarray.cli",
        "train",
        "lm",
        "--preset",
        "tiny",
        "--quiet",
        "--corpus",
        str(corpus),
        "--out",
        str(out),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    cfg = RunStore.open(out).config
    assert cfg["data"]["source"] == "corpus" and len(cfg["data"]["tokenizer_sha256"]) == 64
    assert (tmp_path / "c.corpus" / "tokenizer.json").exists()
    again = subprocess.run(cmd, capture_output=True, text=True)  # reuses the tokenised corpus: same config
    assert again.returncode == 0 and "is complete" in again.stdout, again.stderr
    s = get("lm")
    (tokens,) = s.sgld_dataset(cfg, 4)
    assert tokens.shape == (4, 32) and (tokens[:, 0] == 0).all()  # contexts start with BOS
