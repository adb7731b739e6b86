"""What a student sees in JupyterLab, tested in a real browser (Debian's Chromium, via Playwright).

Run alone with:  .venv/bin/python -m pytest -m browser
A failing check saves a screenshot into build/browser-failures/.
"""
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
LESSON = REPO / "notebooks" / "00_setup_and_tour.ipynb"
LIVE_PLOT_CELL = "cu.fit(lenet"               # the lesson's training cell with its live plot
WIDGET_CELL = "widgets.interactive(train_spirals"
FAILURES = REPO / "build" / "browser-failures"
WIDGET_MANAGER = "@jupyter-widgets/jupyterlab-manager"

pytestmark = pytest.mark.browser


def _require_browser():
    try:
        import playwright  # noqa: F401
    except ImportError:
        missing = "the playwright package (make test installs it)"
    else:
        missing = None if CHROMIUM.exists() else "Debian's chromium (make test installs it as root)"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"browser tests need {missing}")
        pytest.skip(f"browser tests need {missing}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def jupyterlab(root: Path, disabled_extensions=()):
    """JupyterLab on a free loopback port, with a token and its own config, data, runtime and HOME."""
    port, token = _free_port(), secrets.token_hex(16)
    dirs = {name: root / name for name in ("config", "data", "runtime", "home", "work")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    (dirs["config"] / "labconfig").mkdir(exist_ok=True)
    disabled = {"@jupyterlab/apputils-extension:announcements": True,  # no news pop-up
                **{name: True for name in disabled_extensions}}
    (dirs["config"] / "labconfig" / "page_config.json").write_text(json.dumps({"disabledExtensions": disabled}))
    (dirs["work"] / "notebooks").mkdir(exist_ok=True)
    shutil.copy(LESSON, dirs["work"] / "notebooks" / LESSON.name)  # autosave must not touch the repo
    env = {k: v for k, v in os.environ.items() if k not in ("COURSE_HEADLESS", "MPLBACKEND")}
    env.update(HOME=str(dirs["home"]), JUPYTER_CONFIG_DIR=str(dirs["config"]),
               JUPYTER_DATA_DIR=str(dirs["data"]), JUPYTER_RUNTIME_DIR=str(dirs["runtime"]))
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={dirs['work']}", "--LabApp.expose_app_in_browser=True"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")
    log = open(root / "jupyterlab.log", "wb")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("JupyterLab did not start:\n" + (root / "jupyterlab.log").read_text()[-3000:])
                time.sleep(0.5)
        yield url, token
    finally:
        server.send_signal(signal.SIGTERM)  # it ignores SIGINT without a terminal
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


@contextlib.contextmanager
def chromium_page(name: str, offline: bool = False):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        context = browser.new_context(viewport={"width": 1280, "height": 900}, offline=offline)
        page = context.new_page()
        try:
            yield page
        except BaseException:
            FAILURES.mkdir(parents=True, exist_ok=True)
            shot = FAILURES / f"{name}.png"
            with contextlib.suppress(Exception):
                page.screenshot(path=str(shot), full_page=True)
                print(f"screenshot of the failure: {shot}")
            raise
        finally:
            browser.close()


# JavaScript run in the page through JupyterLab's app object (--LabApp.expose_app_in_browser).
NOTEBOOK = "window.jupyterapp.shell.currentWidget"
KERNEL_IDLE = f"""() => {{
  // the app object appears some time after the page's load event: until then, keep waiting
  if (!window.jupyterapp || !window.jupyterapp.shell) return false;
  const panel = {NOTEBOOK};
  const kernel = panel && panel.sessionContext && panel.sessionContext.session
                 && panel.sessionContext.session.kernel;
  return !!kernel && kernel.status === 'idle' && panel.content.widgets.length > 0;
}}"""
PROGRESS = f"""() => {{
  const cells = {NOTEBOOK}.content.widgets.filter(c => c.model.type === 'code');
  const errors = [];
  cells.forEach((c, i) => c.model.outputs.toJSON().forEach(o => {{
    if (o.output_type === 'error') errors.push(`code cell ${{i + 1}}: ${{o.ename}}: ${{o.evalue}}`);
  }}));
  const status = {NOTEBOOK}.sessionContext.session.kernel.status;
  return {{done: cells.every(c => c.model.executionCount !== null) && status === 'idle', errors}};
}}"""


def _cell_images(page, marker: str, inside_widget: bool = False) -> list[str]:
    selector = ".jupyter-widgets img" if inside_widget else ".jp-OutputArea-output img"
    return page.evaluate(f"""() => {{
      const cell = {NOTEBOOK}.content.widgets.find(c => c.model.sharedModel.getSource().includes({json.dumps(marker)}));
      if (!cell) return null;
      return Array.from(cell.node.querySelectorAll({json.dumps(selector)})).map(img => img.src);
    }}""")


def check_lesson_in_jupyterlab(page, url: str, token: str) -> None:
    """Open the lesson, run all cells, and check what a student would see."""
    page.goto(f"{url}/lab/tree/notebooks/{LESSON.name}?token={token}")
    page.wait_for_function(KERNEL_IDLE, timeout=120_000)
    # fire and forget: awaiting the command's promise would return only when every cell is done
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")

    live_frames: set[str] = set()
    deadline = time.monotonic() + 600
    while True:
        images = _cell_images(page, LIVE_PLOT_CELL) or []
        live_frames.update(images)
        state = page.evaluate(PROGRESS)
        assert not state["errors"], f"cells show errors: {state['errors']}"
        if state["done"]:
            break
        assert time.monotonic() < deadline, "the notebook did not finish running in 10 minutes"
        time.sleep(0.25)

    final = _cell_images(page, LIVE_PLOT_CELL)
    assert final is not None, "the training cell is missing"
    assert len(final) == 1, f"the live plot should be one updating image, found {len(final)} images"
    assert len(live_frames) >= 2, "the live plot did not change while the model trained"

    slider = page.locator(".jp-Notebook .widget-hslider, .jp-Notebook .jupyter-widget-hslider").first
    try:
        slider.wait_for(state="attached", timeout=15_000)
    except Exception as err:  # playwright's TimeoutError
        raise AssertionError("the learning-rate widget did not render as a slider") from err
    before = _cell_images(page, WIDGET_CELL, inside_widget=True)
    assert before, "the widget's output shows no figure"
    slider.scroll_into_view_if_needed()
    readout = slider.locator(".widget-readout, .jupyter-widget-readout").first
    readout.click()
    page.keyboard.press("Control+A")
    page.keyboard.type("0.01")
    page.keyboard.press("Enter")
    deadline = time.monotonic() + 60
    while _cell_images(page, WIDGET_CELL, inside_widget=True) in (before, [], None):
        assert time.monotonic() < deadline, "moving the slider did not change the widget's output"
        time.sleep(0.25)
    assert not page.evaluate(PROGRESS)["errors"]


def test_lesson_runs_in_jupyterlab_with_live_plot_and_widgets(tmp_path):
    _require_browser()
    with jupyterlab(tmp_path) as (url, token), chromium_page("jupyterlab") as page:
        check_lesson_in_jupyterlab(page, url, token)


def test_negative_control_without_the_widget_manager_the_test_fails(tmp_path):
    """The same check with the widget manager extension disabled must fail on the widgets."""
    _require_browser()
    with jupyterlab(tmp_path, disabled_extensions=[WIDGET_MANAGER]) as (url, token), \
            chromium_page("negative-control") as page:
        with pytest.raises(AssertionError, match="widget"):
            check_lesson_in_jupyterlab(page, url, token)


def test_course_run_html_shows_widgets_offline(tmp_path):
    """`course run` saves widget state, and its HTML renders the widgets with no internet."""
    _require_browser()
    from course_utils.notebooks import run_notebook, widget_assets

    if widget_assets() is None:
        pytest.fail("the local widget renderer is missing: run scripts/setup.sh (it needs npm)")
    notebook = tmp_path / LESSON.name
    shutil.copy(LESSON, notebook)
    result = run_notebook(notebook, tmp_path / "html")
    assert result.status == "ok", result.error
    assert not list((tmp_path / "html").glob(".*")), "temporary files were left behind"
    with chromium_page("course-run-html", offline=True) as page:
        requested = []
        page.on("request", lambda r: requested.append(r.url))
        page.goto(result.html.as_uri())
        slider = page.locator(".widget-hslider, .jupyter-widget-hslider").first
        slider.wait_for(state="attached", timeout=30_000)
        assert page.locator(".jupyter-widgets img").count() >= 1, "the widget's saved output is missing"
        widget_code = [u for u in requested if "embed-amd" in u or "require" in u]
        assert widget_code and all(u.startswith("file:") for u in widget_code), widget_code
