"""Read every chunk of a run store and say what is wrong with it (``devarray verify``).

A store can be damaged after it was written: a chunk that no longer decodes (a flipped bit on
disk, a truncated copy), a group whose metadata went missing, a result that carries another
settings fingerprint than its group's. :func:`verify` finds all of them and names each by store,
group, variable and step, so the fix can be as small as the damage: ``devarray redo STORE GROUP
--steps S`` for a few checkpoints of a computed group.

What "must be finite" means for a variable is in its schema (``finite: true``, or
``finite_unless: FLAG`` for a value that is NaN by design where a flag is set, like the LLC of a
checkpoint whose chains all diverged), for its done steps only: not-yet-computed ones hold the
fill value.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import zarr

from devarray import schemas

from .errors import StoreError
from .store import RunStore


@dataclass
class Problem:
    """One thing wrong with a group: ``kind`` is ``undecodable``, ``not finite``,
    ``other settings`` or ``damaged metadata``; ``steps`` are values of the group's index."""

    group: str
    kind: str
    detail: str
    variable: str | None = None
    steps: list[int] = field(default_factory=list)

    def describe(self, path) -> str:
        where = f"{self.group}/{self.variable}" if self.variable else self.group
        at = f" at {_steps_text(self.steps)}" if self.steps else ""
        return f"{path}: {where}{at}: {self.detail}"


@dataclass
class GroupReport:
    group: str
    index: str | None
    entries: int  # length of the index dim (checkpoints, or train steps)
    done: int  # entries whose done flag is set and whose fingerprint matches
    chunks: int  # chunks read
    problems: list[Problem]


def _steps_text(steps: list[int]) -> str:
    shown = ", ".join(map(str, steps[:5])) + ("…" if len(steps) > 5 else "")
    return f"step{'s' if len(steps) > 1 else ''} {shown}"


def _index_blocks(arr: zarr.Array, index_dim: str | None):
    """Slices of ``arr`` one chunk long along the group's index dim (whole otherwise)."""
    dims = tuple(arr.metadata.dimension_names or ())
    if not arr.shape:
        yield (), None
        return
    if dims[:1] != (index_dim,) or index_dim is None:
        yield (slice(None),) * arr.ndim, None
        return
    c = arr.chunks[0]
    for start in range(0, arr.shape[0], c):
        yield (slice(start, start + c),), (start, min(start + c, arr.shape[0]))


def _finite_rule(schema: dict | None, name: str, arr: zarr.Array) -> tuple[bool, str | None]:
    """(must be finite at done steps, flag that excuses it) from the variable's schema."""
    if schema is None:
        return False, None
    spec = schema["variables"].get(name)
    if spec is None:  # a dynamic group's variable (params' tensors, observables)
        return bool(schema.get("dynamic_finite")), None
    return bool(spec.get("finite") or spec.get("finite_unless")), spec.get("finite_unless")


def _done_mask(g: zarr.Group, name: str, arr: zarr.Array, done: dict[str, np.ndarray]) -> np.ndarray | None:
    """The done mask that applies to ``name``: its observable's flag, else the group's ``done``."""
    flag = arr.attrs.get("observable")
    return done.get(f"done_{flag}") if flag else done.get("done")


def verify_group(store: RunStore, name: str) -> GroupReport:
    g = store.group(name)
    schema_name = g.attrs.get("schema", name)
    schema = schemas.load(schema_name) if schema_name in schemas.SCHEMAS else None
    index = schema.get("index") if schema else None
    problems: list[Problem] = []
    chunks = 0
    index_values = None
    if index and index in g:
        try:
            index_values = np.asarray(g[index][:])
        except Exception as e:  # any codec failure: what we are here to report
            problems.append(Problem(name, "undecodable", f"cannot be decoded ({e})", variable=index))
    arrays = {k: g[k] for k in sorted(g.array_keys())}
    decoded: dict[str, np.ndarray | None] = {}  # None: a chunk of it did not decode (reported)
    for vname, arr in arrays.items():
        blocks, bad_steps, error = [], [], None
        chunks += arr.nchunks  # every chunk of it is read below
        for sel, span in _index_blocks(arr, index):
            try:
                blocks.append(np.asarray(arr[sel]))
            except Exception as e:  # any codec failure: what we are here to report
                error = e
                if span and index_values is not None:
                    bad_steps += index_values[span[0] : span[1]].tolist()
        if error is not None:
            why = f"cannot be decoded ({error})"
            problems.append(Problem(name, "undecodable", why, variable=vname, steps=bad_steps))
        decoded[vname] = None if error is not None else (np.concatenate(blocks) if len(blocks) > 1 else blocks[0])
    whole = decoded.get

    done = {}
    for flag in [k for k in arrays if k == "done" or k.startswith("done_")]:
        mask = whole(flag)
        if mask is not None:
            done[flag] = mask.astype(bool)
    expected = g.attrs.get("settings_id")
    ids = whole("settings_id") if "settings_id" in arrays else None
    if expected is not None and ids is not None and "done" in done and index_values is not None:
        wrong = done["done"] & (ids != expected)
        if wrong.any():
            problems.append(
                Problem(
                    name,
                    "other settings",
                    "marked done but made with other settings than the group's (not counted as done)",
                    variable="settings_id",
                    steps=index_values[wrong].tolist(),
                )
            )
        done["done"] = done["done"] & (ids == expected)
    for vname, arr in arrays.items():
        must, excuse = _finite_rule(schema, vname, arr)
        if not must or arr.dtype.kind != "f" or index_values is None:
            continue
        values, mask = whole(vname), _done_mask(g, vname, arr, done)
        if values is None or mask is None:
            continue
        bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1) & mask
        if excuse and excuse in arrays:
            excused = whole(excuse)
            if excused is not None:
                bad &= ~excused.reshape(len(excused), -1).any(axis=1)
        if bad.any():
            why = "is not finite at done checkpoints"
            problems.append(Problem(name, "not finite", why, variable=vname, steps=index_values[bad].tolist()))
    entries = len(index_values) if index_values is not None else 0
    n_done = int(done["done"].sum()) if "done" in done else entries
    return GroupReport(name, index, entries, n_done, chunks, problems)


def verify(path) -> list[GroupReport]:
    """Every group of the store at ``path``, every chunk read; damaged metadata included."""
    store = RunStore.open(path, mode="r", validate=False)
    damaged = store.damaged_groups()
    reports = [GroupReport(g, None, 0, 0, 0, [Problem(g, "damaged metadata", why)]) for g, why in damaged.items()]
    for name in store.groups():
        if name not in damaged:
            reports.append(verify_group(store, name))
    return sorted(reports, key=lambda r: r.group)


def first_undecodable(paths) -> str | None:
    """The first chunk among the stores at ``paths`` that does not decode, described in one line
    with the command that recomputes it; None when every chunk decodes."""
    for path in paths:
        try:
            reports = verify(path)
        except StoreError:
            continue
        for r in reports:
            for p in r.problems:
                if p.kind in ("undecodable", "damaged metadata"):
                    return p.describe(path) + "; " + fix_for(path, p)
    return None


def fix_for(path, p: Problem) -> str:
    """What recomputes the damage ``p`` (one clause)."""
    from_training = ("params", "optimizer", "eval", "train")
    if p.kind == "damaged metadata":
        return f"`devarray {p.group} {path} --overwrite` recomputes the group"
    if p.group in from_training:
        return "it was written by training: retrain the run (devarray train ... --overwrite)"
    if p.group == "stages":
        return f"`devarray stages {path}` recomputes the stages"
    if p.steps:
        return f"`devarray redo {path} {p.group} --steps {','.join(map(str, p.steps))}` recomputes it"
    return f"`devarray {p.group} {path} --overwrite` recomputes the group"


def table(path, reports: list[GroupReport]) -> str:
    """The per-group table ``devarray verify`` prints, then one line per problem."""
    lines = [f"{path}", f"  {'group':<12} {'entries':>8} {'done':>6} {'chunks':>7}  status"]
    for r in reports:
        status = "ok" if not r.problems else ", ".join(sorted({p.kind for p in r.problems}))
        lines.append(f"  {r.group:<12} {r.entries:>8} {r.done:>6} {r.chunks:>7}  {status}")
    for r in reports:
        for p in r.problems:
            lines.append(f"  - {p.describe(path)}; {fix_for(path, p)}")
    return "\n".join(lines)
