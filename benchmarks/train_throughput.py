"""Training throughput with store writes against the same loop without any writes.

    python benchmarks/train_throughput.py [--setting lr] [--preset quick] [--steps N] [--repeats 1]

Both loops evaluate the test set at every checkpoint (that is computation, not writing); only
the writes differ. Printed: steps/s of each and their ratio (target >= 0.95 at the quick preset).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from devarray.train import make_config, train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setting", default="lr", help="lr or lm")
    p.add_argument("--preset", default="quick")
    p.add_argument("--steps", type=int, help="train this many steps of the preset's schedule (default all)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    config = make_config(args.setting, args.preset, num_steps=args.steps)
    n = config.schedule.num_steps
    rates = {"no writes": [], "store writes": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            # alternate the order so neither loop always runs on a warmer machine
            for write in [False, True] if r % 2 == 0 else [True, False]:
                t0 = time.perf_counter()
                train(Path(tmp) / f"run{r}.zarr", config, progress=False, write=write)
                rates["store writes" if write else "no writes"].append(n / (time.perf_counter() - t0))
    base, written = max(rates["no writes"]), max(rates["store writes"])
    n_ckpt = len(config.checkpoints())
    print(f"{args.setting} preset {args.preset}: {n} steps, {n_ckpt} checkpoints, {args.threads} threads")
    print(f"{'loop':<14}{'steps/s':>10}")
    print(f"{'no writes':<14}{base:>10.1f}")
    print(f"{'store writes':<14}{written:>10.1f}")
    print(f"ratio (writes / no writes): {written / base:.3f}   target >= 0.95")


if __name__ == "__main__":
    main()
