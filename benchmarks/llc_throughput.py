"""SGLD throughput of the LLC sampler on the regression transformer (51,717 parameters).

For 8 chains and minibatches of 64, 256 and 1,024 contexts, measures chain-steps per second of
the per-chain loop, the batched (vmap) path and the path that ``method="auto"`` chooses, and
the achieved model FLOP rate, 6 × parameters × tokens per second, as a fraction of the dense
fp32 matmul rate (a 2048² matmul) measured in the same run. The loop runs with the fused
attention kernel and its chains side by side (one single-threaded chain per thread), as
pipelines/llc.py runs it; "explicit" is the same loop with PyTorch's explicit attention, and
"1-at-a-time" the loop taking one chain at a time on all threads: the baselines for what the
kernel and the side-by-side chains buy. Paths are timed in alternating
rounds and each one's best round is kept (the matmul rate too), so a noisy shared machine
hurts every path alike; the chosen path's median round is printed beside its best, for the
spread (memory-bound work on a shared VM varies by ±20 % between rounds, the in-cache matmul
much less).

    python benchmarks/llc_throughput.py [--device cuda] [--threads 1] [--compile]

``--compile`` also times the chosen path under ``torch.compile`` (compile time reported
separately) and checks that its losses match eager within float rounding.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from devarray.models.regression import RegressionTransformer, count_parameters
from devarray.slt.sgld import choose_method, run_chains, sgld_settings
from devarray.tasks.regression import RegressionTask, mse_loss


def matmul_rate(device: torch.device, size: int = 2048, repeats: int = 10) -> float:
    """Best dense fp32 matmul rate in FLOP/s."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        (a @ b).sum().item()
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best


def throughput(model, data, m, chains, steps, method, compile=False, fused=True, chain_threads=None):
    settings = sgld_settings(batch_size=m, num_chains=chains, num_draws=steps, epsilon=1e-4, localization=100.0)
    model.fused_attention = fused
    try:
        r = run_chains(
            model, mse_loss, data, settings, seed=0, method=method, compile=compile, chain_threads=chain_threads
        )
    finally:
        model.fused_attention = True
    return chains * steps / r.seconds, r.loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--chains", type=int, default=8)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    torch.manual_seed(0)
    model = RegressionTransformer().to(device)
    model.fused_attention = True  # as pipelines/llc.py runs it
    P = count_parameters(model)
    batch = RegressionTask().dataset(16 * max(args.batch_sizes), "bench")
    data = (batch.x.to(device), batch.y.to(device))
    tokens_per_row = 2 * data[0].shape[1]  # x (n, K, D) -> 2K tokens
    peak = matmul_rate(device)  # best over the whole run: re-measured in every round
    print(f"device {device}, {torch.get_num_threads()} threads, model {P:,} parameters, {args.chains} chains")

    rows = []
    for m in args.batch_sizes:
        steps = max(3, 4096 // m)
        chosen = choose_method("auto", device, tuple(x[:m] for x in data), args.chains)
        variants = {
            "loop": ("loop", False, True),
            "explicit": ("loop", False, False),
            "one_at_a_time": ("loop", False, True, 1),
            "batched": ("batched", False, True),
        }
        row = {"m": m, "chosen": chosen}
        if args.compile:
            variants["compiled"] = (chosen, True, True)
            t = time.perf_counter()
            throughput(model, data, m, args.chains, 1, chosen, compile=True)  # compiles (cached per model)
            row["compile_s"] = time.perf_counter() - t
            compiled = throughput(model, data, m, args.chains, steps, chosen, compile=True)[1]
            eager = throughput(model, data, m, args.chains, steps, chosen)[1]
            row["compiled_max_rel_diff"] = float(((compiled - eager).abs() / eager.abs()).max())
        for variant in variants.values():  # warm-up: allocator, first-call overheads
            throughput(model, data, m, args.chains, 1, *variant)
        rounds = {name: [] for name in variants}
        for _ in range(args.rounds):  # alternate, keep each variant's best round
            for name, variant in variants.items():
                rounds[name].append(throughput(model, data, m, args.chains, steps, *variant)[0])
            peak = max(peak, matmul_rate(device, repeats=3))
        best = {name: max(r) for name, r in rounds.items()}
        rows.append(row | best | {"auto": best[chosen], "auto_median": statistics.median(rounds[chosen])})

    flop = lambda r, key: 6 * P * r["m"] * tokens_per_row * r[key] / peak
    head = (
        f"{'m':>5} {'chosen':>8} {'loop':>9} {'explicit':>9} {'batched':>9} {'auto':>9} {'auto/loop':>9} "
        f"{'loop/explicit':>13} {'loop/1-at-a-time':>16} {'batch/loop':>10} {'auto FLOP/matmul':>16} "
        f"{'median round':>12}"
    )
    if args.compile:
        head += f" {'compiled':>9} {'comp/auto':>9} {'comp FLOP/matmul':>16} {'compile s':>9} {'max rel Δloss':>13}"
    print(f"dense fp32 matmul (2048²): {peak / 1e9:.1f} GFLOP/s (best in the run)\n")
    print(
        "chain-steps per second (best of rounds); loop = per-chain loop with the fused attention kernel, "
        "chains side by side; explicit = with PyTorch attention; 1-at-a-time = one chain at a time"
    )
    print(head)
    for r in rows:
        line = (
            f"{r['m']:>5} {r['chosen']:>8} {r['loop']:>9.1f} {r['explicit']:>9.1f} "
            f"{r['batched']:>9.1f} {r['auto']:>9.1f} "
            f"{r['auto'] / r['loop']:>9.2f} {r['loop'] / r['explicit']:>13.2f} {r['loop'] / r['one_at_a_time']:>16.2f} "
            f"{r['batched'] / r['loop']:>10.2f} "
            f"{flop(r, 'auto'):>16.1%} {flop(r, 'auto_median'):>12.1%}"
        )
        if args.compile:
            line += (
                f" {r['compiled']:>9.1f} {r['compiled'] / r['auto']:>9.2f} {flop(r, 'compiled'):>16.1%}"
                f" {r['compile_s']:>9.1f} {r['compiled_max_rel_diff']:>13.1e}"
            )
        print(line)


if __name__ == "__main__":
    main()
