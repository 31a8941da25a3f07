"""Run stores on object storage (issue 16), against a real S3 API: moto's server on a free local
port, reached through s3fs and zarr's FsspecStore exactly as a bucket on AWS would be."""

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

from devarray.errors import StoreError  # noqa: E402
from devarray.location import Location  # noqa: E402
from devarray.store import RunStore, open_runs  # noqa: E402

BUCKET = "devarray-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """Storage options of a fresh bucket on moto's S3 server, started on a free local port for
    this module (in its own process: in-thread, it would share the GIL with training and SGLD)."""
    import s3fs

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    pytest.fail("moto's server did not start")
                time.sleep(0.2)
        options = {"key": "test", "secret": "test", "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}"}}
        s3fs.S3FileSystem(**options, skip_instance_cache=True).mkdir(BUCKET)
        yield options
    finally:
        server.terminate()
        server.wait(timeout=30)


def _objects(options, prefix: str) -> list[str]:
    import s3fs

    return s3fs.S3FileSystem(**options, skip_instance_cache=True).find(f"{BUCKET}/{prefix}")


def test_the_lock_is_an_object_only_one_writer_creates(s3):
    url = f"s3://{BUCKET}/locks/a.zarr"
    store = RunStore.create(url, {"setting": "lr", "seed": 0}, storage_options=s3)
    other = RunStore.open(url, storage_options=s3)
    with store.writing("llc"):
        assert f"{BUCKET}/locks/.a.zarr.llc.lock" in _objects(s3, "locks/")
        with pytest.raises(StoreError, match=f"being written by pid {os.getpid()}.*delete s3://{BUCKET}/locks/"):
            with other.writing("llc"):
                pass
    assert f"{BUCKET}/locks/.a.zarr.llc.lock" not in _objects(s3, "locks/")
    with other.writing("llc"):  # released: the next writer gets it
        pass


def test_a_url_without_its_package_names_the_extra(monkeypatch):
    import fsspec

    def missing(*args, **kwargs):
        raise ImportError("Install s3fs to access S3")

    monkeypatch.setattr(fsspec, "url_to_fs", missing)
    with pytest.raises(StoreError, match=r"pip install devarray\[s3\]"):
        RunStore.open("s3://bucket/x.zarr")


@pytest.mark.slow
def test_train_llc_on_two_processes_kill_a_worker_resume_and_read_back_with_plain_xarray(s3, tmp_path):
    from devarray.pipelines import llc
    from devarray.pipelines.runner import run_requests
    from distributed import Client, LocalCluster

    from devarray.settings import get
    from devarray.train import make_config, train

    url = f"s3://{BUCKET}/runs/lr-tiny-s0.zarr"
    loc = Location.of(url, s3)
    config = make_config("lr", "tiny", seed=0, num_steps=30, n_linear=6, n_log=6)  # 10 checkpoints
    train(loc, config, progress=False)
    steps = config.checkpoints()
    preset = get("lr").llc_presets["tiny"]
    settings = preset.settings()

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None, silence_logs=logging.ERROR) as cluster,
        Client(cluster) as client,
    ):
        pids = client.run(os.getpid)
        store = RunStore.open(loc, mode="r")
        killed = []

        finished = threading.Event()

        def kill_one_worker_mid_run():
            # once a few checkpoints are done, a worker dies (SIGKILL): its task in flight is lost
            while not finished.is_set():
                if store.has_group("llc") and len(store.done_steps("llc")) >= 3:
                    pid = next(iter(pids.values()))
                    os.kill(pid, signal.SIGKILL)
                    killed.append((pid, len(store.done_steps("llc"))))
                    return
                time.sleep(0.2)

        killer = threading.Thread(target=kill_one_worker_mid_run)
        killer.start()
        request = llc.request(loc, settings, dataset_size=preset.dataset_size)
        outcomes = run_requests([request], client=client, progress=False, desc="llc")
        finished.set()
        killer.join()
        assert killed and killed[0][1] < len(steps), "the worker was killed before the run ended"
        # the scheduler gave the lost task to the other worker (or the restarted one): nothing lost
        assert outcomes[0].error is None
        assert sorted(r["step"] for r in outcomes[0].results) == steps.tolist()
        writers = set(client.run(os.getpid).values())
        assert pids[next(iter(pids))] not in writers  # the killed process is gone

        # the same command again: everything is done, nothing is recomputed
        again = run_requests([llc.request(loc, settings, dataset_size=preset.dataset_size)], client=client)
        assert again[0].results == []

    # nothing duplicated: one chunk object per checkpoint, every step done under one fingerprint
    chunks = [k for k in _objects(s3, "runs/lr-tiny-s0.zarr/llc/llc_mean/") if "/c/" in k]
    assert len(chunks) == len(steps)
    store = RunStore.open(loc, mode="r")
    ds = store.dataset("llc").load()
    assert ds.done.values.all() and (ds.settings_id.values == ds.attrs["settings_id"]).all()
    assert not [k for k in _objects(s3, "runs/") if k.endswith(".lock")]  # every lock released

    # numbers written by either process equal the same estimate made here, bit for bit (1 thread)
    from devarray.checkpoints import load_model
    from devarray.slt import estimate_llc

    for step in (int(steps[1]), int(steps[-1])):
        model = load_model(store, step)
        model.fused_attention = True
        setting = get("lr")
        ref = estimate_llc(
            model,
            setting.loss,
            setting.sgld_dataset(store.config, preset.dataset_size),
            settings,
            seed=0,
            method=ds.attrs["method"],
            warn=False,
        )
        np.testing.assert_array_equal(ds.loss.sel(step=step).values, ref.loss.values)

    # plain xarray reads it back, with no devarray import
    code = (
        "import json, sys, xarray as xr\n"
        f"ds = xr.open_zarr({url!r}, group='llc', storage_options=json.loads(sys.argv[1]))\n"
        "assert 'devarray' not in sys.modules\n"
        "print(int(ds.done.sum()), float(ds.llc_mean.sum()))\n"
    )
    import json

    out = subprocess.run([sys.executable, "-c", code, json.dumps(s3)], capture_output=True, text=True, check=True)
    done, total = out.stdout.split()
    assert int(done) == len(steps) and float(total) == pytest.approx(float(ds.llc_mean.sum()), rel=1e-6)

    # and devarray's own cross-run reader takes the URL glob
    runs = open_runs(f"s3://{BUCKET}/runs/*.zarr", group="llc", storage_options=s3)
    assert runs.sizes["run"] == 1 and runs.run.values.tolist() == ["lr-tiny-s0"]


def test_a_memory_url_is_a_store_like_any_other():
    import xarray as xr

    url = "memory://devarray-test/runs/m.zarr"
    store = RunStore.create(url, {"setting": "lr", "seed": 3})
    store.create_group("hessian", {"step": np.array([0, 10]), "eig": np.arange(2)})
    with store.writing("hessian"):
        store.write("hessian", 10, {"trace": 2.5, "top_eigenvalues": [2.0, 1.0]})
        store.mark_done("hessian", 10)
    assert store.damaged_groups() == {}
    ds = xr.open_zarr(url, group="hessian")  # plain xarray, the consolidated metadata
    assert ds.done.values.tolist() == [False, True] and float(ds.trace.sel(step=10)) == 2.5
    runs = open_runs("memory://devarray-test/runs/*.zarr", group="hessian")
    assert runs.seed.values.tolist() == [3]
    with pytest.raises(StoreError, match="already exists; pass --overwrite"):
        RunStore.create(url, {"setting": "lr", "seed": 3})
