import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "apps"))
import stages as app  # noqa: E402


def test_app_builds_for_a_store(tiny_store):
    run = app.load_run(str(tiny_store))
    assert run["llc"] is None  # no LLC yet: the panels show what there is
    assert len(app.main_panels(run)) == 2  # test loss and weight norm
    names = app.observable_names(run["observables"])
    assert "attn_entropy" in names and not any(n.startswith("done_") for n in names)
    plot = app.observable_plot(run["observables"], "attn_entropy", None, {"layer": ["1"], "query": ["y"]})
    assert len(plot) == 4  # the 4 heads of block 1, y-queries
    layout = app.build_app([str(tiny_store)])
    assert "devarray" in layout.title


def test_app_without_stores_says_what_to_do():
    layout = app.build_app([])
    assert "devarray demo" in layout[0].object


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_panel_serve_renders_the_app(tiny_store):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "panel", "serve", "apps/stages.py", "--port", str(port),
                             "--address", "127.0.0.1", "--allow-websocket-origin", f"127.0.0.1:{port}",
                             "--args", str(tiny_store)],
                            cwd=Path(__file__).parents[1], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        page = None
        for _ in range(120):
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/stages", timeout=30).read().decode()
                break
            except OSError:
                time.sleep(0.5)
        assert page is not None, "panel serve did not answer"
        assert "devarray" in page and "bokeh" in page.lower()
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert "Traceback" not in out, out
