"""Where a run store lives: a local directory or any fsspec URL (``s3://…``, ``gs://…``, ``memory://…``).

A :class:`Location` is the URL plus its fsspec ``storage_options`` (credentials, endpoint), small
and picklable, so a pipeline task on another machine opens the same store. Local paths keep
zarr's ``LocalStore``; URLs get zarr 3's ``FsspecStore``, with the same layout and the same
order of writes (data first, ``done`` last). The one thing a filesystem gives that object
storage does not is ``O_EXCL``; :meth:`Location.create_exclusive` uses a conditional put
(``If-None-Match: *`` on S3) there, so a lock object is created by exactly one writer.
"""

from __future__ import annotations

import json
import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path

from .errors import StoreError

__all__ = ["Location", "is_url", "parse_storage_options"]

# the fsspec package each protocol needs, for a one-line install hint instead of an ImportError
_EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure", "abfs": "azure"}


def is_url(path) -> bool:
    """True for ``proto://…`` other than ``file://`` (those are local paths)."""
    text = str(path)
    return "://" in text and not text.startswith("file://")


def parse_storage_options(text: str | None) -> dict:
    """``--storage-options`` JSON as a dict (one-line error when it is not a JSON object)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as e:
        raise StoreError(
            f"--storage-options is not valid JSON ({e.msg}); give an object, e.g. "
            '\'{"client_kwargs": {"endpoint_url": "http://localhost:9000"}}\''
        ) from None
    if not isinstance(value, dict):
        raise StoreError("--storage-options must be a JSON object, e.g. '{\"anon\": false}'")
    return value


@dataclass(frozen=True)
class Location:
    """A store's URL (or local path) and the fsspec options to reach it."""

    url: str
    storage_options: dict = field(default_factory=dict, hash=False, compare=False)

    @classmethod
    def of(cls, path, storage_options: dict | None = None) -> Location:
        if isinstance(path, Location):
            return path if storage_options is None else cls(path.url, dict(storage_options))
        text = os.fspath(path) if isinstance(path, os.PathLike) else str(path)
        if text.startswith("file://"):
            text = text.removeprefix("file://")
        return cls(text.rstrip("/") or text, dict(storage_options or {}))

    # ------------------------------------------------------------------ identity
    @property
    def is_local(self) -> bool:
        return not is_url(self.url)

    @property
    def path(self):
        """What messages and callers see: a ``Path`` for a local store, the URL otherwise."""
        return Path(self.url) if self.is_local else self.url

    @property
    def name(self) -> str:
        return posixpath.basename(self.url.rstrip("/"))

    def __reduce__(self):  # a task gets the URL and options, not a live connection
        return (Location, (self.url, self.storage_options))

    def __str__(self) -> str:
        return self.url

    def __fspath__(self) -> str:  # lets local locations go wherever a path does
        if not self.is_local:
            raise TypeError(f"{self.url} is not a local path")
        return self.url

    def sibling(self, name: str) -> Location:
        """Another location in the same folder or prefix (a lock object beside the store)."""
        if self.is_local:
            return Location(str(Path(self.url).parent / name), self.storage_options)
        return Location(posixpath.join(posixpath.dirname(self.url), name), self.storage_options)

    def child(self, name: str) -> Location:
        sep = os.sep if self.is_local else "/"
        return Location(f"{self.url}{sep}{name}", self.storage_options)

    # ------------------------------------------------------------------ fsspec
    @property
    def options(self) -> dict:
        """The storage options as given, with listings uncached unless asked: several processes
        write one store, and a cached listing would hide a group another process created."""
        return {"use_listings_cache": False, **self.storage_options}

    @property
    def fs(self):
        """The fsspec filesystem (cached per location; fsspec caches instances too)."""
        cached = self.__dict__.get("_fs")
        if cached is None:
            cached = self._connect()
            object.__setattr__(self, "_fs", cached)
        return cached

    def _connect(self):
        import fsspec

        try:
            fs, root = fsspec.url_to_fs(self.url, **self.options)
        except ImportError:
            protocol = self.url.split("://", 1)[0]
            extra = _EXTRAS.get(protocol, protocol)
            raise StoreError(
                f"{protocol}:// stores need an extra package; pip install devarray[{extra}]"
                if extra == "s3"
                else f"{protocol}:// stores need fsspec's {protocol} filesystem; pip install the fsspec extra for it"
            ) from None
        except (ValueError, TypeError) as e:
            raise StoreError(f"cannot reach {self.url}: {e}; check --storage-options") from None
        object.__setattr__(self, "_root", root)
        return fs

    @property
    def root(self) -> str:
        """The location's path inside its filesystem (the bucket and key for S3)."""
        self.fs  # noqa: B018 - connects and sets _root
        return self.__dict__["_root"]

    def zarr_store(self, *, read_only: bool = False):
        """zarr's store for this location: ``LocalStore`` on disk, ``FsspecStore`` elsewhere."""
        import zarr

        if self.is_local:
            return zarr.storage.LocalStore(self.url, read_only=read_only)
        self.fs  # noqa: B018 - a missing fsspec backend is a one-line error here, not deep inside zarr
        return zarr.storage.FsspecStore.from_url(self.url, storage_options=self.options, read_only=read_only)

    def exists(self, key: str = "") -> bool:
        if self.is_local:
            return os.path.exists(os.path.join(self.url, key) if key else self.url)
        self.fs.invalidate_cache(self._key(key))  # another process may have written it since
        return self.fs.exists(self._key(key))

    def read_text(self, key: str = "") -> str:
        """The text of ``key`` (FileNotFoundError when there is none)."""
        if self.is_local:
            return Path(self.url, key).read_text() if key else Path(self.url).read_text()
        self.fs.invalidate_cache(self._key(key))
        return self.fs.cat_file(self._key(key)).decode()

    def remove(self, key: str = "", *, recursive: bool = False) -> None:
        target = self._key(key)
        if self.is_local:
            import shutil

            path = os.path.join(self.url, key) if key else self.url
            if recursive and os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.lexists(path):
                os.unlink(path)
            return
        try:
            self.fs.rm(target, recursive=recursive)
        except FileNotFoundError:
            pass

    def listdir(self) -> list[tuple[str, bool]]:
        """(name, is_folder) of the entries directly inside this location."""
        if self.is_local:
            if not os.path.isdir(self.url):
                return []
            return sorted((e.name, e.is_dir()) for e in os.scandir(self.url))
        try:
            entries = self.fs.ls(self.root, detail=True, refresh=True)
        except FileNotFoundError:
            return []
        return sorted((posixpath.basename(e["name"].rstrip("/")), e["type"] == "directory") for e in entries)

    def create_exclusive(self, text: str) -> None:
        """Write ``text`` here only if nothing is here yet (FileExistsError otherwise): ``O_EXCL``
        on a disk, a conditional put on object storage (S3's ``If-None-Match: *``)."""
        if self.is_local:
            fd = os.open(self.url, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            return
        self.fs.pipe_file(self.root, text.encode(), mode="create")

    def _key(self, key: str) -> str:
        return posixpath.join(self.root, key) if key else self.root


def glob_locations(pattern: str, storage_options: dict | None = None) -> list[Location]:
    """The stores matching ``pattern`` (a local glob or a URL with wildcards), sorted."""
    import glob

    loc = Location.of(pattern, storage_options)
    if loc.is_local:
        return [Location.of(p) for p in sorted(glob.glob(pattern))]
    protocol = loc.url.split("://", 1)[0]
    return [Location(f"{protocol}://{p}", loc.storage_options) for p in sorted(loc.fs.glob(loc.root))]
