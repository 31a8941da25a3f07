"""The run store: one zarr (format 3) hierarchy per training run, the single source of truth.

Groups follow the YAML schemas in ``schemas/``. Arrays are pre-allocated from the checkpoint
schedule with one checkpoint per chunk along ``step``, so every checkpoint is an independent
region write and two processes never write the same chunk. A boolean ``done`` array per group
(written after the data) says what is complete; readers trust ``done``, not the presence of
numbers. Only this module touches zarr; everything else reads through xarray.

Metadata (group and array creation, attributes) is changed only by the driving process and is
consolidated after each change, so ``xr.open_zarr(path, group=...)`` needs no devarray import.

A store may live anywhere fsspec reaches (``devarray.location``): a path is a local directory, a
URL (``s3://bucket/runs/lr-s0.zarr``) is opened with zarr's ``FsspecStore`` and the
``storage_options`` given; layout and write order are the same.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import hashlib
import json
import os
import socket
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr
import zarr
from zarr.core.sync import sync as zarr_sync

from devarray import schemas

from . import __version__
from .errors import StoreError
from .location import Location, glob_locations

__all__ = ["SCHEMA_VERSION", "RunStore", "StoreError", "VarSpec", "open_run", "open_runs"]

# 2: the run config names its setting; every group records the schema it follows
SCHEMA_VERSION = 2


@dataclass
class VarSpec:
    """A variable to allocate: its dims, dtype and CF attributes (``long_name``, ``units``,
    ``description``). ``chunk`` is the chunk length along the group's index dim (default 1)."""

    dims: tuple[str, ...]
    dtype: str
    attrs: dict = field(default_factory=dict)
    chunk: int | None = None

    @classmethod
    def from_schema(cls, spec: dict) -> VarSpec:
        attrs = {k: spec[k] for k in ("long_name", "units", "description") if k in spec}
        return cls(tuple(spec["dims"]), spec["dtype"], attrs, spec.get("chunk"))


def compressor_codecs(spec: dict | None, itemsize: int) -> list | None:
    """zarr codecs for a schema's ``compressor`` entry: ``{codec: zstd, level}`` or ``{codec: blosc,
    cname, clevel, shuffle}`` (a byte or bit shuffle puts the floats' exponents side by side);
    None stores raw chunks."""
    if spec is None:
        return None
    spec = dict(spec)
    codec = spec.pop("codec")
    if codec == "zstd":
        return [zarr.codecs.ZstdCodec(**spec)]
    if codec == "blosc":
        return [zarr.codecs.BloscCodec(typesize=itemsize, **spec)]
    raise StoreError(f"unknown compressor codec {codec!r} in a schema; use zstd or blosc")


def _zarr_dtype(dtype: np.dtype):
    """Text is stored as zarr's variable-length UTF-8 strings (in the v3 spec; fixed-width isn't)."""
    return str if dtype.kind in "UOT" else dtype


def _fill_value(dtype: np.dtype):
    if dtype.kind == "f":
        return np.nan
    if dtype.kind == "b":
        return False
    if dtype.kind in "iu":
        return -1 if dtype.kind == "i" else 0
    if dtype.kind in "UOT":
        return ""
    raise StoreError(f"unsupported dtype {dtype}; use float, int, bool or fixed-width str")


def settings_id(attrs: dict) -> int:
    """A stable fingerprint of a group's settings (its attrs but the fingerprint itself): written
    beside every checkpoint's results, so a number is never taken for one made otherwise."""
    payload = json.dumps({k: v for k, v in attrs.items() if k != "settings_id"}, sort_keys=True, default=str)
    return int.from_bytes(hashlib.blake2b(payload.encode(), digest_size=8).digest(), "little") & ((1 << 62) - 1)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def _quiet_zarr():
    """zarr warns that consolidated metadata and variable-length strings are not yet in the v3
    spec; both are read by zarr and xarray. Silenced here, around our own calls only."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message=".*(unstable|not part of the Zarr format 3|Zarr V3 specification|[Cc]onsolidated metadata).*",
        )
        yield


class RunStore:
    """A run store on disk. Create with :meth:`create`, open with :meth:`open`."""

    def __init__(self, path: str | os.PathLike | Location, root: zarr.Group):
        self.location = Location.of(path)
        self.path = self.location.path  # a Path on disk, the URL elsewhere (for messages and names)
        self.root = root
        self._arrays: dict[str, zarr.Array] = {}  # open array handles; metadata is immutable once made
        self._steps: dict[str, np.ndarray] = {}
        self._consolidated: zarr.Group | None = None  # object storage: where array metadata is read

    # ------------------------------------------------------------------ opening
    @classmethod
    def create(cls, path, config: dict, *, overwrite: bool = False, storage_options: dict | None = None) -> RunStore:
        """A new, empty store whose root attributes hold ``config``.

        An existing store is replaced only with ``overwrite=True``."""
        loc = Location.of(path, storage_options)
        path = loc.path
        if loc.exists():
            if not overwrite:
                raise StoreError(f"{path} already exists; pass --overwrite to replace it")
            loc.remove(recursive=True)
        try:
            if loc.is_local:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            root = zarr.open_group(loc.zarr_store(), mode="w-", zarr_format=3)
        except OSError as e:
            raise StoreError(f"cannot create {path}: {e.strerror or e}; choose a writable --out path") from None
        root.attrs.update(
            {
                "config": config,
                "setting": config.get("setting", ""),
                "seed": config.get("seed", -1),
                "preset": config.get("preset", ""),
                "schema_version": SCHEMA_VERSION,
                "devarray_version": __version__,
                "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            }
        )
        store = cls(loc, root)
        store.consolidate()
        return store

    @classmethod
    def open(cls, path, mode: str = "r+", *, validate: bool = True, storage_options: dict | None = None) -> RunStore:
        """Open an existing store and validate it against the schemas (pipeline workers skip
        that: their driver has validated the store, and it costs a read of every array's metadata)."""
        loc = Location.of(path, storage_options)
        path = loc.path
        if not loc.exists("zarr.json"):
            raise StoreError(f"{path} is not a run store (no zarr.json); train one with `devarray train`")
        # live metadata, not the consolidated copy: another process may have added a group
        root = zarr.open_group(loc.zarr_store(read_only=mode == "r"), mode=mode, zarr_format=3, use_consolidated=False)
        if "config" not in root.attrs:
            raise StoreError(f"{path} is a zarr store but not a devarray run store (no config attribute)")
        version = root.attrs.get("schema_version")
        if isinstance(version, int) and version > SCHEMA_VERSION:
            raise StoreError(
                f"{path} was written by a newer devarray (schema version {version}; this one reads "
                f"{SCHEMA_VERSION}); upgrade devarray to read it"
            )
        if version != SCHEMA_VERSION:
            raise StoreError(
                f"{path} has schema version {version}, this devarray reads {SCHEMA_VERSION}; "
                "retrain the run (add --overwrite) with this devarray"
            )
        store = cls(loc, root)
        if validate:
            store.validate()
        return store

    def consolidate(self) -> None:
        self._arrays.clear()
        self._steps.clear()
        self._consolidated = None
        with _quiet_zarr():
            zarr.consolidate_metadata(self.root.store)

    # ------------------------------------------------------------------ metadata
    @property
    def config(self) -> dict:
        return self.root.attrs["config"]

    def has_group(self, name: str) -> bool:
        if not self.location.is_local:
            # one request, where listing the root reads every child's metadata (a request each)
            return "/" not in name and self.location.exists(f"{name}/zarr.json")
        with warnings.catch_warnings():
            # another process's atomic metadata write leaves a moment's `zarr.json.<id>.partial`
            warnings.filterwarnings("ignore", message=".*partial is not recognized as a component", module="zarr")
            return name in self.root.group_keys()

    def group(self, name: str) -> zarr.Group:
        if not self.has_group(name):
            raise StoreError(f"{self.path} has no group {name!r}; groups: {', '.join(self.groups()) or 'none'}")
        return zarr.open_group(
            self.root.store, path=name, mode=self.root.read_only and "r" or "r+", zarr_format=3, use_consolidated=False
        )

    def schema(self, group: str) -> dict:
        """The schema a stored group follows (its ``schema`` attribute; by default its name)."""
        return schemas.load(self.group(group).attrs.get("schema", group))

    def groups(self) -> list[str]:
        return sorted(self.root.group_keys())

    def array(self, group: str, name: str) -> zarr.Array:
        key = f"{group}/{name}"
        if key not in self._arrays:
            g = self._structure(group)
            if name not in g:
                g = self.group(group)  # not in the consolidated copy: the live hierarchy decides
                if name not in g:
                    raise StoreError(f"{self.path} has no variable {key}")
            self._arrays[key] = g[name]
        return self._arrays[key]

    def _structure(self, group: str) -> zarr.Group:
        """The group arrays are opened from: the live one on disk; on object storage the
        consolidated copy, which holds every array's metadata in the root's one object (a request
        per array otherwise). Array metadata never changes once made, and the driver consolidates
        after every structural change; attributes (settings) are still read live by ``group``."""
        if self.location.is_local:
            return self.group(group)
        if self._consolidated is None:
            with _quiet_zarr():
                self._consolidated = zarr.open_group(
                    self.root.store, mode="r" if self.root.read_only else "r+", zarr_format=3, use_consolidated=True
                )
        try:
            return self._consolidated[group]
        except KeyError:
            return self.group(group)

    def steps(self, group: str = "params") -> np.ndarray:
        """The checkpoint steps of a group (its ``step`` coordinate)."""
        if group not in self._steps:
            self._steps[group] = self.array(group, "step")[:]
        return self._steps[group]

    def index_of(self, group: str, step: int) -> int:
        steps = self.steps(group)
        i = np.searchsorted(steps, step)
        if i >= len(steps) or steps[i] != step:
            raise StoreError(f"step {step} is not a checkpoint of {self.path}; checkpoints: {steps[0]}…{steps[-1]}")
        return int(i)

    # ------------------------------------------------------------------ creating groups
    def create_group(
        self,
        name: str,
        coords: dict[str, np.ndarray],
        variables: dict[str, VarSpec] | None = None,
        attrs: dict | None = None,
        *,
        schema: str | None = None,
        overwrite: bool = False,
    ) -> zarr.Group:
        """Allocate group ``name`` from its schema (``schemas/<schema>.yaml``, default the group's
        name; a setting's ``eval`` follows its own) plus ``variables`` (for dynamic groups).

        ``coords`` gives the values of every dimension coordinate the variables use. The group
        records the schema it follows in its ``schema`` attribute."""
        schema_name = schema or name
        schema = schemas.load(schema_name)
        if self.has_group(name):
            if not overwrite:
                raise StoreError(f"{self.path} already has group {name!r}; pass --overwrite to recompute it")
            self.clear_done(name)  # before the attrs change: no interleaving leaves old numbers marked done
            del self.root[name]
        if self.location.exists(name):  # a damaged group (no zarr.json): replaced only on overwrite
            if not overwrite:
                raise StoreError(f"group {name!r} of {self.path} is damaged; pass --overwrite to recompute it")
            self.location.child(name).remove(recursive=True)
        g = self.root.create_group(
            name, attributes={"description": schema["description"], "schema": schema_name, **(attrs or {})}
        )
        for cname, cspec in schema["coords"].items():
            if cname in coords:
                self._create_coord(g, cname, np.asarray(coords[cname]), cspec)
        specs = {k: VarSpec.from_schema(v) for k, v in schema["variables"].items()}
        specs.update(variables or {})
        self._add(g, schema, specs, coords)
        self.consolidate()
        return g

    def add_variables(
        self,
        name: str,
        variables: dict[str, VarSpec],
        coords: dict[str, np.ndarray] | None = None,
        *,
        overwrite: bool = False,
    ) -> None:
        """Add variables (and any new dimension coordinates) to an existing dynamic group."""
        schema = self.schema(name) if self.has_group(name) else schemas.load(name)
        if not schema.get("dynamic"):
            raise StoreError(f"group {name!r} has a fixed schema; new variables go in 'observables'")
        g = self.group(name)
        coords = dict(coords or {})
        for cname, values in coords.items():
            if cname in g:
                if not np.array_equal(g[cname][:], np.asarray(values)):
                    raise StoreError(f"coordinate {cname!r} of {name!r} differs from the stored one")
            else:
                known = schema["coords"].get(cname) or {
                    "long_name": cname.replace("_", " "),
                    "units": "1",
                    "description": f"Label along the {cname!r} dimension of a user observable.",
                }
                self._create_coord(g, cname, np.asarray(values), {k: v for k, v in known.items() if k != "dtype"})
        for vname in variables:
            if vname in g:
                if not overwrite:
                    raise StoreError(f"{name}/{vname} already exists; pass --overwrite to recompute it")
                del g[vname]
        all_coords = {c: g[c][:] for c in g.array_keys() if g[c].metadata.dimension_names == (c,)}
        self._add(g, schema, variables, all_coords)
        self.consolidate()

    @staticmethod
    def _create_coord(g: zarr.Group, cname: str, values: np.ndarray, cspec: dict) -> None:
        attrs = {k: cspec[k] for k in ("long_name", "units", "description") if k in cspec}
        dtype = np.dtype(cspec.get("dtype", values.dtype))
        with _quiet_zarr():
            arr = g.create_array(
                cname,
                shape=values.shape,
                chunks=values.shape or (1,),
                dtype=_zarr_dtype(dtype),
                fill_value=_fill_value(dtype),
                dimension_names=[cname],
                attributes=attrs,
            )
            arr[...] = values.astype(object if dtype.kind == "U" else dtype)

    def _add(self, g: zarr.Group, schema: dict, specs: dict[str, VarSpec], coords: dict) -> None:
        index = schema.get("index")
        sizes = {c: len(np.asarray(v)) for c, v in coords.items()}
        for vname, spec in specs.items():
            missing = [d for d in spec.dims if d not in sizes]
            if missing:
                raise StoreError(f"{g.name}/{vname}: no coordinate for dims {missing}")
            shape = tuple(sizes[d] for d in spec.dims)
            chunks = tuple((spec.chunk or 1) if d == index else sizes[d] for d in spec.dims)
            chunks = tuple(max(1, min(c, s)) for c, s in zip(chunks, shape)) or (1,)
            dtype = np.dtype(spec.dtype)
            # the schema's compressor serves its float data; flags, text and indices keep zarr's default
            floats = dtype.kind == "f" and "compressor" in schema
            codecs = compressor_codecs(schema["compressor"], dtype.itemsize) if floats else "auto"
            with _quiet_zarr():
                g.create_array(
                    vname,
                    shape=shape,
                    chunks=chunks,
                    dtype=_zarr_dtype(dtype),
                    fill_value=_fill_value(dtype),
                    dimension_names=list(spec.dims),
                    attributes=dict(spec.attrs),
                    compressors=codecs,
                )

    def write_group(self, name: str, ds: xr.Dataset, *, overwrite: bool = False) -> None:
        """Write a whole (small) group at once, e.g. ``stages``; replaced only with ``overwrite``."""
        if self.has_group(name):
            if not overwrite:
                raise StoreError(f"{self.path} already has group {name!r}; pass --overwrite to recompute it")
            del self.root[name]
        ds = ds.copy()
        for v in list(ds.variables):  # text as variable-length strings (zarr v3 spec)
            if ds[v].dtype.kind == "U":
                ds[v] = ds[v].astype(object)
        if name in schemas.SCHEMAS:
            ds.attrs["schema"] = name
        with _quiet_zarr():
            ds.to_zarr(self.root.store, group=name, mode="w", zarr_format=3, consolidated=False)
        self.consolidate()

    # ------------------------------------------------------------------ writing data
    def write(self, group: str, step: int, values: dict[str, np.ndarray]) -> None:
        """Write one checkpoint's region of several variables (no metadata changes)."""
        self.write_regions([(group, step, values)])

    def write_slice(self, group: str, start: int, values: dict[str, np.ndarray]) -> None:
        """Write a contiguous range along the group's index dim, starting at position ``start``."""
        n = len(next(iter(values.values())))
        self.write_regions([(group, slice(start, start + n), values)])

    def write_regions(self, regions: list[tuple[str, int | slice, dict[str, np.ndarray]]]) -> None:
        """Write many variables' regions at once: ``(group, step or slice of positions, values)``.

        All of them go to zarr's event loop as one batch of concurrent writes (its async API),
        not one blocking round trip per array: a checkpoint of the language model is ~40 arrays,
        and the sequential hand-offs between threads cost the training loop more than the bytes."""
        puts = []
        for group, where, values in regions:
            sel = where if isinstance(where, slice) else self.index_of(group, where)
            for name, value in values.items():
                value = np.asarray(value)
                value = value.astype(object) if value.dtype.kind == "U" else value
                puts.append((self.array(group, name).async_array, sel, value))

        async def put_all():
            await asyncio.gather(*(arr.setitem(sel, value) for arr, sel, value in puts))

        with _quiet_zarr():
            zarr_sync(put_all())

    def mark_done(self, group: str, step: int, flag: str = "done") -> None:
        self.write_regions([(group, step, {flag: True})])

    def done_steps(self, group: str, flag: str = "done") -> np.ndarray:
        """Steps whose ``flag`` is set and, in groups that record provenance, whose results carry
        the group's settings fingerprint (a step written under other settings is not done)."""
        if not self.has_group(group) or flag not in self.group(group):
            return np.array([], dtype=np.int64)
        mask = self.array(group, flag)[:].astype(bool)
        expected = self.group(group).attrs.get("settings_id")
        if expected is not None and "settings_id" in self.group(group):
            mask &= self.array(group, "settings_id")[:] == expected
        return self.steps(group)[mask]

    def clear_done(self, group: str, steps=None, flags=None) -> None:
        """Unset the done flags (``flags``, default all) of ``steps`` (all by default) of ``group``:
        what follows may rewrite them, and no reader may take the old numbers for finished ones
        meanwhile."""
        if not self.has_group(group):
            return
        g = self.group(group)
        every = [k for k in g.array_keys() if k == "done" or k.startswith("done_")]
        for flag in every if flags is None else [f for f in flags if f in every]:
            arr = self.array(group, flag)
            if steps is None:
                arr[:] = False
            else:
                for s in steps:
                    arr[self.index_of(group, int(s))] = False

    # ------------------------------------------------------------------ one writer per group
    def _lock(self, group: str) -> Location:
        # beside the store, not in it: zarr takes any file inside for a broken member of the hierarchy
        return self.location.sibling(f".{self.location.name}.{group}.lock")

    def lock_holder(self, group: str) -> dict | None:
        """Who holds the write lock of ``group`` (host, pid, started), or None; a lock whose
        process is gone from this host is stale and removed."""
        lock = self._lock(group)
        try:
            holder = json.loads(lock.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {"host": "?", "pid": -1, "started": "?"}
        if holder.get("host") == socket.gethostname() and not _pid_alive(int(holder.get("pid", -1))):
            lock.remove()
            return None
        return holder

    @contextmanager
    def writing(self, group: str, *, wait: bool = False, poll: float = 0.5):
        """Hold the advisory write lock of ``group``: a lock file (a lock object on object
        storage, created by a conditional put) with host, pid and start time beside the store.
        A second writer stops at once with a message naming the holder, or waits with ``wait``.
        Readers never need it."""
        lock = self._lock(group)
        me = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        }
        while True:
            try:
                lock.create_exclusive(json.dumps(me))
                break
            except FileExistsError:
                holder = self.lock_holder(group)
                if holder is None:
                    continue  # stale lock removed: try again
                if not wait:
                    raise StoreError(
                        f"{group} of {self.path} is being written by pid {holder.get('pid')} on "
                        f"{holder.get('host')} since {holder.get('started')}; wait for it to finish "
                        f"(or pass --wait; if that process is gone, delete {lock})"
                    ) from None
                time.sleep(poll)
            except OSError as e:
                raise StoreError(
                    f"cannot write to {self.path}: {e.strerror or e}; check that the store is on a "
                    "writable disk with free space"
                ) from None
        try:
            yield
        finally:
            lock.remove()

    # ------------------------------------------------------------------ damage
    def damaged_groups(self) -> dict[str, str]:
        """Groups whose metadata is missing (a folder of arrays without its zarr.json) or
        disagrees with the consolidated copy in the root, with what is wrong."""
        out = {}
        try:
            consolidated = json.loads(self.location.read_text("zarr.json")).get("consolidated_metadata") or {}
        except (OSError, ValueError):
            consolidated = {}
        listed = {
            k: v
            for k, v in (consolidated.get("metadata") or {}).items()
            if "/" not in k and v.get("node_type") == "group"
        }
        for name, is_folder in self.location.listdir():
            if not is_folder:
                continue
            entry = self.location.child(name)
            if not entry.exists("zarr.json"):
                if entry.listdir():
                    out[name] = f"{name}/zarr.json is missing"
                continue
            if name in listed:
                try:
                    live = json.loads(entry.read_text("zarr.json")).get("attributes", {})
                except ValueError:
                    out[name] = f"{name}/zarr.json is unreadable"
                    continue
                if live != listed[name].get("attributes", {}):
                    out[name] = f"{name}/zarr.json disagrees with the consolidated metadata"
        return out

    def check_intact(self, group: str) -> None:
        """Refuse to write into a damaged group: its numbers could end up under the wrong label."""
        problem = self.damaged_groups().get(group)
        if problem:
            raise StoreError(
                f"group {group!r} of {self.path} is damaged ({problem}); nothing is written into it "
                f"until you pass --overwrite, which recomputes the whole group"
            )

    # ------------------------------------------------------------------ reading
    def dataset(self, group: str) -> xr.Dataset:
        self.group(group)  # clear error when missing
        return xr.open_zarr(self.root.store, group=group, consolidated=False)

    def read_params(self, step: int) -> dict[str, np.ndarray]:
        """All parameter tensors of one checkpoint, as numpy arrays keyed by state_dict name."""
        if step not in set(self.done_steps("params").tolist()):
            raise StoreError(f"checkpoint {step} of {self.path} is not written (not done)")
        i = self.index_of("params", step)
        return {k: self.array("params", k)[i] for k in self.variables("params") if k != "done"}

    def variables(self, group: str) -> list[str]:
        """Names of the data variables of a group (not its coordinates), sorted."""
        g = self._structure(group)
        return sorted(k for k in g.array_keys() if tuple(g[k].metadata.dimension_names or ()) != (k,))

    def validate(self) -> None:
        """Check every group against its schema: dims, dtypes and CF attributes."""
        for name in self.groups():
            g = self.group(name)
            schema_name = g.attrs.get("schema", name)
            if schema_name not in schemas.SCHEMAS:
                continue  # user groups are allowed; they are not ours to check
            schema = schemas.load(schema_name)
            refinements = [d for d in schema.get("refinements", ()) if d in g]  # optional dims it has
            for vname, vspec in schema["variables"].items():
                if vname not in g:
                    raise StoreError(f"{self.path}: {name}/{vname} is missing (schema {name}.yaml)")
                arr = g[vname]
                dims = schemas.variable_dims(schema_name, vname, refinements)
                if tuple(arr.metadata.dimension_names or ()) != dims:
                    raise StoreError(
                        f"{self.path}: {name}/{vname} has dims {arr.metadata.dimension_names}, schema says {list(dims)}"
                    )
                if np.dtype(arr.dtype) != np.dtype(vspec["dtype"]):
                    raise StoreError(f"{self.path}: {name}/{vname} has dtype {arr.dtype}, schema says {vspec['dtype']}")
            index = schema.get("index")
            for vname in g.array_keys():
                arr = g[vname]
                dims = tuple(arr.metadata.dimension_names or ())
                if index and dims[:1] != (index,) and dims != (vname,):
                    raise StoreError(f"{self.path}: {name}/{vname} does not start with dim {index!r}")
                if not {"long_name", "units"} <= set(arr.attrs) and dims != (vname,):
                    raise StoreError(f"{self.path}: {name}/{vname} lacks long_name/units attributes")

    def summary(self) -> str:
        """What the store holds and how complete it is (for ``devarray info``)."""
        cfg = self.config
        lines = [f"{self.path}  setting={cfg.get('setting')} preset={cfg.get('preset')} seed={cfg.get('seed')}"]
        for name in self.groups():
            g = self.group(name)
            variables = sorted(k for k in g.array_keys() if g[k].metadata.dimension_names != (k,))
            flags = [v for v in variables if v == "done" or v.startswith("done_")]
            data = [v for v in variables if v not in flags]
            schema_name = g.attrs.get("schema", name)
            index = schemas.load(schema_name).get("index") if schema_name in schemas.SCHEMAS else None
            if index and flags:
                total = g[index].shape[0]
                parts = []
                for f in flags:
                    n = int(np.count_nonzero(g[f][:]))
                    parts.append(f"{f.removeprefix('done_') if f != 'done' else 'done'} {n}/{total}")
                status = ", ".join(parts)
            else:
                status = "written"
            lines.append(f"  {name:<12} {len(data):3d} variables  {status}")
        return "\n".join(lines)


# ---------------------------------------------------------------------- public helpers
def open_run(path, storage_options: dict | None = None) -> xr.DataTree:
    """A whole run store as an ``xarray.DataTree`` (groups as children, config in root attrs)."""
    store = RunStore.open(path, mode="r", storage_options=storage_options)
    return xr.open_datatree(store.root.store, engine="zarr", consolidated=False)


def open_runs(pattern, group: str, *, storage_options: dict | None = None, mixed: bool = False) -> xr.Dataset:
    """One group of every store matching ``pattern`` (a glob, local or URL, or a list of paths
    and URLs), concatenated along a new ``run`` dim, with ``seed``, ``setting`` and ``preset`` as
    coordinates along ``run``.

    Runs whose checkpoint schedules differ are outer-joined on ``step``: a step a run lacks
    reads NaN there and its ``done`` flags are False, so ``done`` says which numbers are real.
    Runs of different settings (``lr`` beside ``lm``), or whose ``group`` was computed with
    different settings (its ``settings_id``), are refused unless ``mixed=True``."""
    if isinstance(pattern, str | os.PathLike | Location):
        wild = any(c in str(pattern) for c in "*?[")
        locations = glob_locations(str(pattern), storage_options) if wild else [Location.of(pattern, storage_options)]
    else:
        locations = [Location.of(p, storage_options) for p in pattern]
    if not locations:
        raise StoreError(f"no run stores match {str(pattern)!r}")
    datasets, names, seeds, tasks, presets, ids = [], [], [], [], [], []
    for loc in locations:
        store = RunStore.open(loc, mode="r")
        datasets.append(store.dataset(group))
        names.append(loc.name.removesuffix(".zarr"))
        seeds.append(int(store.root.attrs.get("seed", -1)))
        tasks.append(str(store.root.attrs.get("setting", "")))
        presets.append(str(store.root.attrs.get("preset", "")))
        ids.append(store.group(group).attrs.get("settings_id"))
    if not mixed:
        for what, values in (("settings", tasks), (f"{group} settings (settings_id)", ids)):
            if len(set(map(str, values))) > 1:
                first = values[0]
                other = next(i for i, v in enumerate(values) if v != first)
                raise StoreError(
                    f"{names[0]} and {names[other]} differ in their {what} ({first} vs {values[other]}); "
                    "stack runs made alike, or pass mixed=True to stack them anyway"
                )
    ds = xr.concat(datasets, dim="run", join="outer", combine_attrs="drop_conflicts")
    for flag in [v for v in ds.data_vars if v == "done" or v.startswith("done_")]:
        # a step a run lacks is not done there: keep the flags boolean, never NaN-padded floats
        ds[flag] = ds[flag].fillna(False).astype(bool)
    return ds.assign_coords(run=names, seed=("run", seeds), setting=("run", tasks), preset=("run", presets))
