"""How fast the app answers on a paper-size store, and how much memory its server holds.

    python benchmarks/app.py [--store /tmp/paper.zarr] [--repeat 3]

The store: the regression setting's paper schedule (190 checkpoints), 10 chains × 5,000 SGLD draws,
synthesised with the RunStore API (apps/synthetic.py; training 500k steps and sampling would take
hours on a CPU), plus a second seed so that there is a run to switch to. The page's views are
rendered once, as a server session holds them; each switch — run, variable, step — is timed on the
tab where it is clicked (runs: the sidebar, from the Runs tab), from setting the StagesExplorer
parameter until every view in sight it changes has made its new Bokeh models or updated them in
place (what the server then sends the browser), and printed against the target of one second
(ratio < 1 meets it). Views of hidden tabs redraw when their tab is shown: the cost of showing
the Variables and the Checkpoint tab after a run switch is timed too. Memory: the process's
resident set after the switches, over that before the app was imported, and the llc group's size
on disk for scale (the app must not hold it).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).parents[1] / "apps"))

TARGET_S = 1.0


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", default="/tmp/devarray-bench-app", help="folder for the two synthetic stores")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rss0 = psutil.Process().memory_info().rss

    import synthetic

    root = Path(args.store)
    paths = [root / f"lr-paper-s{seed}.zarr" for seed in (0, 1)]
    for seed, path in enumerate(paths):
        if not (path / "stages").exists():
            t = time.perf_counter()
            synthetic.paper_size_store(path, seed=seed)
            print(f"wrote {path} in {time.perf_counter() - t:.0f} s")

    import panel as pn
    import stages as app

    explorer = app.StagesExplorer([str(root / "*.zarr")])
    steps = explorer.param.step.objects
    print(
        f"store: {len(steps)} checkpoints, llc {explorer.dataset(explorer.lead, 'llc').sizes['chain']} chains × "
        f"{explorer.dataset(explorer.lead, 'llc').sizes['draw']} draws, {_du(paths[0] / 'llc') / 1e6:.0f} MB of llc"
    )
    # one page, rendered once, as a server session holds it: a parameter change then redraws
    # (in place) the views that depend on it, which is what a click costs
    t = time.perf_counter()
    roots = [
        pn.panel(view).get_root()
        for view in (
            explorer.runs_view,
            explorer.stage_table_view,
            explorer.variable_view,
            explorer.attention_view,
            explorer.ln_view,
            explorer.sgld_view,
        )
    ]
    print(f"first page (cold: imports of the plotting backends, model build): {time.perf_counter() - t:.2f} s")

    variables = ["observables/attn_entropy", "llc/llc_trace", "eval/test_loss_k", "params/ln_out.weight"]
    variables = [v for v in variables if v in explorer.param.variable.objects]

    def run(i):
        explorer.runs = [str(paths[(i + 1) % 2])]

    switches = {  # name: (the tab it is clicked on, the click)
        "run": (0, run),
        "variable": (1, lambda i: setattr(explorer, "variable", variables[(i + 1) % len(variables)])),
        "step": (2, lambda i: setattr(explorer, "step", steps[(37 * (i + 1)) % len(steps)])),
    }
    print(f"\n{'switch':<30}{'best s':>9}{'worst s':>9}{'best / target':>15}")

    def report(name, times):
        print(f"{name:<30}{min(times):>9.3f}{max(times):>9.3f}{min(times) / TARGET_S:>14.2f}×")

    for name, (tab, change) in switches.items():
        explorer.tab = tab  # draws what an earlier switch left for this tab: not timed
        times = []
        for i in range(args.repeat):
            t = time.perf_counter()
            change(i)  # returns once every dependent view in sight has made or updated its Bokeh models
            times.append(time.perf_counter() - t)
        report(name, times)
    shown = {1: [], 2: []}
    for i in range(args.repeat):
        explorer.tab = 0
        run(i + 1)
        for tab in shown:
            t = time.perf_counter()
            explorer.tab = tab
            shown[tab].append(time.perf_counter() - t)
    report("show Variables after a run", shown[1])
    report("show Checkpoint after a run", shown[2])
    assert len(roots) == 6
    rss = psutil.Process().memory_info().rss
    print(
        f"\nmemory: {rss / 1e6:.0f} MB resident ({(rss - rss0) / 1e6:.0f} MB since start: imports, caches, "
        f"one model); the llc group on disk is {_du(paths[0] / 'llc') / 1e6:.0f} MB per run"
    )
    print(f"(targets: every switch under {TARGET_S:.0f} s; ratios above 1 miss it; {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
