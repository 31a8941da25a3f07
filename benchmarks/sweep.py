"""Sweep scaling: the same 4-run sweep on 1 and on 2 workers of a LocalCluster, in one run.

    python benchmarks/sweep.py [--preset tiny] [--runs 4] [--pipelines llc,hessian,observe,stages]

Each configuration trains and analyses fresh stores in a temporary folder on its own cluster
(workers warmed first: torch and devarray imported, so start-up is not timed). Printed: the wall
time of each, the speed-up of 2 workers over 1 (the target on a 2-core machine is >= 1.7x), and
the fraction of worker time idle, from dask's task stream: 1 - (time inside tasks) / (workers x
wall time).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time


def _warm():
    import devarray.pipelines.sweep  # noqa: F401


def measure(workers: int, preset: str, runs: int, pipelines: list[str]) -> dict:
    from devarray.pipelines import sweep
    from distributed import Client, LocalCluster, get_task_stream

    with tempfile.TemporaryDirectory() as out:
        specs = sweep.grid("lr", preset, list(range(runs)), {}, out)
        with (
            LocalCluster(
                n_workers=workers, threads_per_worker=1, dashboard_address=None, silence_logs=logging.ERROR
            ) as cluster,
            Client(cluster) as client,
        ):
            client.run(_warm)
            t0 = time.perf_counter()
            with get_task_stream(client) as stream:
                result = sweep.run_sweep(specs, client=client, pipelines=pipelines, progress=False)
            wall = time.perf_counter() - t0
        busy = sum(s["stop"] - s["start"] for rec in stream.data for s in rec["startstops"] if s["action"] == "compute")
        tasks = sum(result.computed.values())
        if result.errors:
            raise SystemExit(f"sweep failed: {result.errors}")
    return {"workers": workers, "wall": wall, "idle": 1 - busy / (workers * wall), "tasks": tasks}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--runs", type=int, default=4)
    p.add_argument("--pipelines", default="llc,hessian,observe,stages")
    args = p.parse_args()
    pipelines = args.pipelines.split(",")
    rows = [measure(w, args.preset, args.runs, pipelines) for w in (1, 2)]
    print(f"{args.runs} runs of lr ({args.preset}), pipelines {args.pipelines}: {rows[0]['tasks']} tasks each")
    print(f"{'workers':>7} {'wall s':>8} {'idle':>6}")
    for r in rows:
        print(f"{r['workers']:>7} {r['wall']:>8.1f} {r['idle']:>6.1%}")
    print(f"speed-up of 2 workers over 1: {rows[0]['wall'] / rows[1]['wall']:.2f}x")


if __name__ == "__main__":
    main()
