"""``devarray app [PATHS]``: serve the run explorer (apps/stages.py) and print its address.

The same page as ``panel serve apps/stages.py --args PATHS``; this only saves typing and picks a
free port. The app lives in apps/ (it only reads stores), so it is loaded from there by path.
"""

from __future__ import annotations

import importlib.util
import socket
import sys
from pathlib import Path

from .errors import DevarrayError

APP = Path(__file__).resolve().parents[1] / "apps" / "stages.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_app():
    """The apps/stages.py module (not an installed package: apps/ sits beside devarray/)."""
    if not APP.exists():
        raise DevarrayError(f"the app is not at {APP}; run `devarray app` from a source checkout of devarray")
    spec = importlib.util.spec_from_file_location("devarray_stages_app", APP)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pn.cache keys its caches by the function's module
    spec.loader.exec_module(module)
    return module


def serve(
    paths: list[str] | None = None,
    port: int | None = None,
    show: bool = False,
    *,
    address: str = "localhost",
    start: bool = True,
):
    """Serve the app on the stores matching ``paths`` (globs; default ``stores/*.zarr``) until
    interrupted. Returns the server (already stopped when ``start``; running when not)."""
    import panel as pn

    app = load_app()
    paths = list(paths or [])
    port = port or _free_port()
    server = pn.serve(
        {"stages": lambda: app.build_app(paths)},
        port=port,
        address=address,
        show=False,
        start=False,
        title="devarray",
        websocket_origin=[f"{address}:{port}", f"127.0.0.1:{port}"],
    )
    url = f"http://{address}:{port}/stages"
    print(f"devarray app: {url}  (Ctrl-C stops it)", flush=True)
    if not start:
        return server
    server.start()
    if show:
        server.io_loop.add_callback(server.show, "/stages")
    try:
        server.io_loop.start()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return server
