"""The app in a real browser: `panel serve apps/stages.py` driven by playwright with Debian's
Chromium (`apt-get install chromium`; never a downloaded browser). What is drawn is read from the
Bokeh document (`Bokeh.documents[0]`), not from pixels; screenshots go to the test's tmp dir."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from test_app import runs  # noqa: F401  the same three stores as the state tests

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium at /usr/bin/chromium"),
]

# What the page draws, from the Bokeh document: figure titles, the runs of the curves, and the
# attention images (title -> sums of squared weights: rows of attention sum to one whatever the
# checkpoint, their squares do not; a title can repeat while a replaced figure is still referenced).
DOC_STATE = """() => {
  const doc = Bokeh.documents[0];
  if (!doc) return null;
  const out = {titles: [], runs: [], heads: {}};
  for (const m of doc.all_models) {
    const data = m.data === undefined ? null : (m.data instanceof Map ? Object.fromEntries(m.data) : m.data);
    if (m.title !== undefined && m.title !== null && m.title.text !== undefined) out.titles.push(m.title.text);
    if (data && data.run) out.runs.push(...Array.from(data.run));
  }
  for (const m of doc.all_models) {
    if (!(m.title && /^layer \\d+ · head \\d+$/.test(m.title.text))) continue;
    let total = 0;
    for (const r of m.renderers) {
      const src = r.data_source; if (!src) continue;
      const d = src.data instanceof Map ? Object.fromEntries(src.data) : src.data;
      if (!d.image) continue;
      for (const img of d.image) for (const v of (img.length !== undefined ? img : [])) total += v * v;
    }
    (out.heads[m.title.text] = out.heads[m.title.text] || []).push(total.toFixed(9));
  }
  out.runs = [...new Set(out.runs)].sort();
  return out;
}"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(runs, tmp_path):  # noqa: F811
    root, paths = runs
    port = _free_port()
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "panel",
            "serve",
            "apps/stages.py",
            "--port",
            str(port),
            "--address",
            "127.0.0.1",
            "--allow-websocket-origin",
            f"127.0.0.1:{port}",
            "--args",
            str(root / "*.zarr"),
        ],
        cwd=Path(__file__).parents[1],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/stages"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(url, timeout=120).read()
                break
            except OSError:
                if proc.poll() is not None:
                    break
                time.sleep(0.25)
        else:
            pytest.fail("panel serve did not answer")
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()
        yield url, paths
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    assert "Traceback" not in (tmp_path / "serve.log").read_text(), (tmp_path / "serve.log").read_text()


def _wait(page, predicate: str, what: str, before=None, timeout: float = 60):
    """Poll the Bokeh document until ``predicate`` (JS over its state ``s`` and ``b = before``) holds."""
    deadline = time.time() + timeout
    state = None
    while time.time() < deadline:
        state = page.evaluate(DOC_STATE)
        if state and page.evaluate(f"([s, b]) => {{ return {predicate}; }}", [state, before]):
            return state
        page.wait_for_timeout(250)
    pytest.fail(f"{what}: not drawn within {timeout}s; the document shows {state}")


def test_the_page_draws_runs_variables_and_checkpoints(served, tmp_path):
    from playwright.sync_api import sync_playwright

    url, paths = served
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        page = browser.new_page(viewport={"width": 1500, "height": 1400})
        errors, failed, foreign = [], [], []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("requestfailed", lambda r: failed.append(f"{r.url} {r.failure}"))
        page.on(
            "request",
            lambda r: (
                foreign.append(r.url)
                if not r.url.startswith(url.split("/stages")[0]) and not r.url.startswith(("data:", "blob:"))
                else None
            ),
        )
        page.goto(url, wait_until="networkidle", timeout=180_000)
        state = _wait(page, "s.titles.includes('Test loss') && s.runs.length === 1", "the lead run's curves")
        lead = state["runs"][0]
        assert len([t for t in state["heads"]]) == 2 * 4, state["heads"]  # tiny model: 2 layers × 4 heads
        page.screenshot(path=str(tmp_path / "runs.png"))

        # another run: add a second seed to the selection
        other = next(Path(q).name.removesuffix(".zarr") for q in paths if Path(q).name.removesuffix(".zarr") != lead)
        select = page.locator("select[multiple]").first
        labels = [o.strip() for o in select.locator("option").all_inner_texts()]
        select.select_option(label=[x for x in labels if x.startswith((lead + " ", other + " "))])
        _wait(page, f"s.runs.includes('{lead}') && s.runs.includes('{other}')", "the added run")

        # another variable
        page.get_by_text("Variables", exact=True).first.click()
        page.locator("select:not([multiple])").first.select_option(label="eval / test_loss — test loss")
        _wait(page, "s.titles.some(t => t.includes('(eval/test_loss)'))", "the chosen variable")
        page.screenshot(path=str(tmp_path / "variables.png"))

        # another step: the stage table's "first" link opens the checkpoint tab at another step
        before = page.evaluate(DOC_STATE)
        page.get_by_text("Runs", exact=True).first.click()
        page.locator(".tabulator-cell").get_by_text("first", exact=True).first.click()
        state = _wait(
            page,
            "Object.values(s.heads).flat().some(v => !Object.values(b.heads).flat().includes(v)) && "
            "s.titles.some(t => t.startsWith('Layer-norm weights at step') && !b.titles.includes(t))",
            "the attention and layer norms of the stage's first checkpoint",
            before,
        )
        assert len(state["heads"]) == 8
        page.wait_for_timeout(1000)
        page.screenshot(path=str(tmp_path / "checkpoint.png"), full_page=True)
        browser.close()
    assert not errors, errors
    assert not failed, failed
    assert not foreign, f"resources from outside the server (the page must work offline): {foreign}"
    assert all((tmp_path / f).stat().st_size > 10_000 for f in ("runs.png", "variables.png", "checkpoint.png"))
