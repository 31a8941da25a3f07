"""Seconds per checkpoint of every language-model observable (appendix C), on random weights.

    python benchmarks/observe_language.py [--preset quick|paper] [--checkpoints 3] [--contexts 256] [--synthetic N]

``paper`` is the 3,355,016-parameter model of Table 3 (context 1,024, vocabulary 5,000); ``--contexts``
and ``--synthetic`` shrink the probe (probe contexts; previous-token and prefix-matching sequences) to a
subset. Prints the median wall and CPU seconds per checkpoint of one ``compute`` call over all language
observables, its ratio to a bare model call over the probe contexts measured in the same run (the
baseline), and each part's share: the shared passes first, then every observable's own work.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch

from devarray.observables.language import behaviour, structure
from devarray.observables.language.probes import probe_data
from devarray.observables.registry import REGISTRY
from devarray.settings import get
from devarray.settings.language import LanguageProbe, fixed, token_source

SHARED = {
    "[shared] probe forward": lambda m, p: behaviour.forward(m, p),
    "[shared] probe forward, W_pos ablated": lambda m, p: behaviour.forward(m, p, ablate=True),
    "[shared] previous-token attention (C.2.3)": structure.prev_token_scores,
    "[shared] prefix-matching attention (C.2.4)": structure.prefix_matching_scores,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="quick", choices=["tiny", "quick", "paper"])
    ap.add_argument("--checkpoints", type=int, default=3)
    ap.add_argument("--contexts", type=int, default=256, help="probe contexts (the setting's default: 256)")
    ap.add_argument("--synthetic", type=int, default=None, help="previous-token / prefix sequences (default 1,000)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    s = get("lm")
    config = s.config(args.preset).to_dict()
    t0 = time.perf_counter()
    tokens = fixed(config, args.contexts, "probe-0")
    kw = {} if args.synthetic is None else {"n_synthetic": args.synthetic}
    probe = LanguageProbe(tokens, 0, probe_data(token_source(config), tokens, 0, **kw))
    print(f"preset {args.preset}: probe built in {time.perf_counter() - t0:.1f}s ({probe.attrs()})")
    times: dict[str, list[float]] = defaultdict(list)
    reg, names = REGISTRY.timed(REGISTRY.names(task="language"), times, first=SHARED)
    wall, cpu, base = [], [], []
    for i in range(args.checkpoints):
        torch.manual_seed(i)
        model = s.build_model(config).eval()
        with torch.no_grad():
            t = time.perf_counter()
            for c in tokens.split(behaviour._chunk(model, tokens.shape[1])):
                model(c[:, :-1])
            base.append(time.perf_counter() - t)
        t, c = time.perf_counter(), time.process_time()
        reg.compute(model, names, probe)
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    n_params = sum(p.numel() for p in model.parameters())
    w, b = statistics.median(wall), statistics.median(base)
    print(
        f"{n_params:,} parameters, context {tokens.shape[1]}, {torch.get_num_threads()} threads: "
        f"{w:.3f} s per checkpoint (CPU {statistics.median(cpu):.3f} s), {w / b:.1f}x one bare model call over "
        f"the probe contexts ({b:.3f} s)"
    )
    total = sum(statistics.median(v) for v in times.values())
    for name, v in times.items():
        m = statistics.median(v)
        print(f"  {name:45s} {m:8.3f} s  {100 * m / total:5.1f} %")


if __name__ == "__main__":
    main()
