"""The ``devarray`` command: the one front door to training, pipelines, figures and the demo.

User mistakes (bad arguments, missing or mismatched stores) end in one line on stderr and exit
status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from .store import StoreError


def _cmd_train(args) -> None:
    from .train import TrainConfig, format_summary, train

    if args.task != "lr":
        raise StoreError(f"unknown task {args.task!r}; available: lr (in-context linear regression)")
    config = TrainConfig.from_preset(args.preset, args.seed, num_steps=args.steps, lr=args.lr,
                                     batch_size=args.batch_size, num_tasks=args.num_tasks)
    out = args.out or f"stores/lr-{args.preset}-s{args.seed}.zarr"
    summary = train(out, config, overwrite=args.overwrite, progress=not args.quiet)
    print(format_summary(summary))


def _cmd_info(args) -> None:
    from .store import RunStore

    for path in args.stores:
        print(RunStore.open(path, mode="r").summary())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="devarray", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a model into a run store")
    t.add_argument("task", choices=None, help="task to train: lr (in-context linear regression)")
    t.add_argument("--preset", default="quick", help="tiny | quick | paper (default quick)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", help="store path (default stores/lr-<preset>-s<seed>.zarr)")
    t.add_argument("--steps", type=int, help="override the preset's number of training steps")
    t.add_argument("--lr", type=float, help="override the maximum learning rate (0.003)")
    t.add_argument("--batch-size", type=int, help="override the batch size (256)")
    t.add_argument("--num-tasks", type=int, help="finite task set of size M (default: fresh tasks, M = ∞)")
    t.add_argument("--overwrite", action="store_true", help="replace an existing store with another config")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=_cmd_train)

    i = sub.add_parser("info", help="what a store holds and how complete it is")
    i.add_argument("stores", nargs="+")
    i.set_defaults(func=_cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except StoreError as e:
        print(f"devarray: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("devarray: interrupted; what was written is kept and the same command resumes", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
