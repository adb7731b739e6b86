"""Run course notebooks headless (nbclient) and write an HTML copy of each (`course run`)."""

from __future__ import annotations

import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from nbclient import NotebookClient

from .files import write_text_atomic

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"


@dataclass
class NotebookResult:
    notebook: Path
    status: str          # "ok", or "failed" (an error, a dead kernel, or a cell past its limit)
    seconds: float
    html: Path | None
    error: str | None = None
    stalled: bool = False  # a cell ran past its time limit: the kernel stopped answering


def course_notebooks(folder: Path = NOTEBOOK_DIR) -> list[Path]:
    """The lesson notebooks in order (their names start with the lesson number)."""
    return sorted(p for p in Path(folder).glob("[0-9][0-9]_*.ipynb"))


def widget_assets() -> Path | None:
    """The locally installed widget renderer (put into the venv by scripts/setup.sh), if any."""
    import sys

    for folder in (os.environ.get("COURSE_WIDGET_ASSETS"), Path(sys.prefix) / "share" / "course-widgets"):
        if folder and (Path(folder) / "html-manager" / "embed-amd.js").is_file() \
                and (Path(folder) / "require.js").is_file():
            return Path(folder)
    return None


def html_exporter(output_dir: Path):
    """nbconvert's HTML exporter; with the local widget renderer copied beside the pages, so the
    saved widget state shows without internet. Without it, the renderer comes from a CDN."""
    import shutil

    from nbconvert import HTMLExporter

    assets = widget_assets()
    if assets is None:
        return HTMLExporter()
    static = Path(output_dir) / "_static"
    if not (static / "html-manager" / "embed-amd.js").is_file():
        tmp = Path(tempfile.mkdtemp(dir=output_dir, prefix=".static-"))
        shutil.copytree(assets, tmp / "_static")
        shutil.rmtree(static, ignore_errors=True)
        os.replace(tmp / "_static", static)
        shutil.rmtree(tmp, ignore_errors=True)
    return HTMLExporter(require_js_url="_static/require.js",
                        widget_renderer_url="_static/html-manager/embed-amd.js")


def run_notebook(path: Path, output_dir: Path, timeout: int = 900) -> NotebookResult:
    """Execute one notebook in its own folder with a fresh kernel; save it as HTML even on failure.

    A cell that runs past `timeout` seconds fails the notebook and is named in the error, however
    the kernel went quiet: no reply at all, a reply whose output never came, or a late reply.
    """
    import nbformat
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    path = Path(path).resolve()
    nb = nbformat.read(path, as_version=4)
    running = {"index": None, "started": None, "slowest": (0.0, None)}

    def on_cell_start(cell, cell_index):
        running["index"], running["started"] = cell_index, time.monotonic()

    def on_cell_executed(cell, cell_index, execute_reply):
        seconds = time.monotonic() - running["started"]
        if seconds > running["slowest"][0]:
            running["slowest"] = (seconds, cell_index)

    client = PromptClient(nb, timeout=timeout, kernel_name="python3",
                           resources={"metadata": {"path": str(path.parent)}},
                           on_cell_start=on_cell_start, on_cell_executed=on_cell_executed,
                           # a reply whose output never comes is a stall too, not a warning
                           raise_on_iopub_timeout=True, iopub_timeout=60,
                           extra_arguments=["--IPKernelApp.log_level=ERROR"])  # no start-up chatter
    os.environ["COURSE_HEADLESS"] = "1"  # the kernel inherits it: live plots draw once, at the end
    os.environ.pop("MPLBACKEND", None)   # a kernel must keep Jupyter's inline backend to show figures
    started = time.perf_counter()
    error, stalled = None, False
    try:
        client.execute()
    except CellExecutionError as err:
        error = _describe_failure(nb, err)
    except CellTimeoutError:
        stalled = True
        error = f"{_cell_name(nb, running['index'])}: no answer within its {timeout} s limit (stalled)"
    except DeadKernelError as err:
        error = f"{_cell_name(nb, running['index'])}: the kernel died ({_first_line(err)})"
    slowest, index = running["slowest"]
    if error is None and slowest > timeout:  # the reply came, but only after the limit
        stalled = True
        error = f"{_cell_name(nb, index)}: took {slowest:.0f} s, past its {timeout} s limit (stalled)"
    seconds = time.perf_counter() - started
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    body, _ = html_exporter(output_dir).from_notebook_node(nb)
    html = Path(output_dir) / (path.stem + ".html")
    write_text_atomic(html, body)
    return NotebookResult(path, "failed" if error else "ok", seconds, html, error, stalled)


class PromptClient(NotebookClient):
    """nbclient, with every wait for a kernel message woken at least once a second.

    zmq.asyncio, under nbclient, can miss the wake-up for a message that has already arrived
    (ZeroMQ signals new messages edge-triggered); the message is then seen only when the wait
    times out, and for a cell's reply that wait is the whole cell limit. Under load, lesson 00's
    widget cell "took" exactly its 120 s limit in 3 of 60 runs. Short waits bound the loss.
    """

    async def async_start_new_kernel_client(self):
        kc = await super().async_start_new_kernel_client()
        for channel in (kc.shell_channel, kc.iopub_channel):
            channel.get_msg = wake_every_second(channel.get_msg)
        return kc


def wake_every_second(get_msg, slice_seconds: float = 1.0):
    """An async get_msg(timeout) that waits in slices of at most `slice_seconds`, so a message
    whose wake-up was missed is found within a slice; raises queue.Empty at the caller's deadline."""
    from queue import Empty

    async def sliced_get_msg(timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return await get_msg(timeout=slice_seconds if left is None else min(slice_seconds, left))
            except Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise

    return sliced_get_msg


def _cell_name(nb, index) -> str:
    """'cell 12 (first line of its source)', numbered from 1 as Jupyter shows them."""
    if index is None:
        return "before the first cell"
    source = nb.cells[index].source.strip()
    first_line = source.splitlines()[0] if source else ""
    return f"cell {index + 1} ({first_line[:60]})"


def _first_line(err) -> str:
    lines = _strip_ansi(str(err)).strip().splitlines()
    return lines[-1] if lines else type(err).__name__


def _strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _describe_failure(nb, err) -> str:
    """'cell 12 (# Check: ...): AssertionError: message', short enough for the table."""
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                return f"{_cell_name(nb, index)}: {output['ename']}: {_strip_ansi(output['evalue'])[:300]}"
    return f"{err.ename}: {_strip_ansi(err.evalue)}"


def run_notebooks(paths, output_dir: Path, timeout: int = 900, echo=print) -> list[NotebookResult]:
    """Run each notebook, print a table of status and seconds, and return the results."""
    results = []
    for path in paths:
        echo(f"running {Path(path).name} ...", flush=True)
        result = run_notebook(Path(path), Path(output_dir), timeout)
        echo(f"  {result.status} in {result.seconds:.1f} s" + (f": {result.error}" if result.error else ""),
             flush=True)
        results.append(result)
    echo("")
    echo(format_table(results))
    return results


def format_table(results) -> str:
    width = max([len("notebook")] + [len(r.notebook.name) for r in results])
    lines = [f"{'notebook':<{width}}  status   seconds", f"{'-' * width}  ------  --------"]
    for r in results:
        lines.append(f"{r.notebook.name:<{width}}  {r.status:<6}  {r.seconds:8.1f}")
    total = sum(r.seconds for r in results)
    lines.append(f"{'total':<{width}}  {'':<6}  {total:8.1f}")
    return "\n".join(lines)
