import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from course_utils import cli
from course_utils.notebooks import course_notebooks

REPO = Path(__file__).resolve().parents[1]


def test_doctor_passes_when_the_course_can_run(capsys):
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "Fashion-MNIST verified: 60000 training" in out and "All good" in out


def test_doctor_fails_and_explains_without_the_dataset(no_dataset_anywhere, capsys):
    assert cli.main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "Problems:" in out and "apt-get install -y dataset-fashion-mnist" in out


def test_data_command(capsys, dataset_copy, no_dataset_anywhere):
    assert cli.main(["data", "--no-download"]) == 1
    assert "not found" in capsys.readouterr().err
    assert cli.main(["data", "--dir", str(dataset_copy), "--no-download"]) == 0
    assert "checksums verified" in capsys.readouterr().out


def _notebook(path, *sources):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_run_writes_html_and_a_table_and_fails_on_errors(tmp_path, capsys):
    good = _notebook(tmp_path / "01_good.ipynb", "x = 6 * 7", "print('answer', x)")
    bad = _notebook(tmp_path / "02_bad.ipynb", "assert 1 + 1 == 3, 'arithmetic is broken'")
    out = tmp_path / "build"
    code = cli.main(["run", str(good), str(bad), "-o", str(out)])
    printed = capsys.readouterr()
    assert code == 1
    assert "01_good.ipynb  ok" in printed.out and "02_bad.ipynb   failed" in printed.out
    assert "arithmetic is broken" in printed.out
    assert sorted(p.name for p in out.glob("*.html")) == ["01_good.html", "02_bad.html"]
    assert not list(out.glob(".*")), "temporary files were left behind"
    assert "answer 42" in (out / "01_good.html").read_text()
    assert cli.main(["run", str(good), "-o", str(out)]) == 0


def test_run_rejects_a_missing_notebook(capsys):
    assert cli.main(["run", "no_such.ipynb"]) == 2
    assert "No such notebook" in capsys.readouterr().err


def test_course_notebooks_are_found_in_order():
    names = [p.name for p in course_notebooks()]
    assert names and names == sorted(names) and names[0].startswith("00_")


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "course_utils.cli", "--help"],
                            capture_output=True, text=True)
    assert result.returncode == 0 and "doctor" in result.stdout and "run" in result.stdout


def test_benchmark_smoke_run_prints_its_json_line():
    """A tiny run of the benchmark: its output format, not its speed (that is measured, not tested)."""
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_training.py"), "--epochs", "1",
         "--limit", "1024", "--workers", "1"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(record) >= {"baseline_ex_per_s", "course_ex_per_s", "ratio", "baseline_test_acc",
                           "course_test_acc"}
    assert record["ratio"] == pytest.approx(record["course_ex_per_s"] / record["baseline_ex_per_s"], rel=0.01)


def test_grading_benchmark_smoke_run_agrees_between_job_counts():
    """Two submissions graded with --jobs 1 and --jobs 2: the benchmark itself exits non-zero if the
    two gradebooks differ; the correct one scores full marks and the untouched one zero."""
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_grading.py"), "--count", "2",
                             "--jobs", "2"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "correct ones scored ['14'], untouched ['0']" in result.stdout
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["speedup"] == pytest.approx(record["seconds_jobs_1"] / record["seconds_jobs_2"], abs=0.02)


def test_run_reports_a_stalled_cell_as_failed_and_names_it(tmp_path, capsys):
    stuck = _notebook(tmp_path / "03_stuck.ipynb", "x = 1", "import time\ntime.sleep(60)", "print('never')")
    code = cli.main(["run", str(stuck), "-o", str(tmp_path / "build"), "--timeout", "3"])
    printed = capsys.readouterr().out
    assert code == 1
    assert "03_stuck.ipynb  failed" in printed
    assert "cell 2 (import time): no answer within its 3 s limit (stalled)" in printed


def test_stopping_fit_during_run_all_stops_the_run_and_keeps_the_history():
    """The notebook's stop button sends the kernel SIGINT. During "Run All" the cells after the
    training cell must not run (their execute requests are aborted), and the History of the
    completed epochs must be there afterwards."""
    from jupyter_client.manager import start_new_kernel

    training = (
        "import os, signal, torch\n"
        "import course_utils as cu\n"
        "class StopButton(cu.Callback):\n"
        "    def on_batch_end(self, run, loss):\n"
        "        if run.iteration == 25:\n"
        "            os.kill(os.getpid(), signal.SIGINT)\n"
        "x, y = cu.make_spirals()\n"
        "torch.manual_seed(0)\n"
        "model = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))\n"
        "history = cu.fit(model, (x, y), epochs=10, lr=0.1, batch_size=60, progress=False,\n"
        "                 live_plot=False, callbacks=[StopButton()])\n")
    km, kc = start_new_kernel(kernel_name="python3", extra_arguments=["--IPKernelApp.log_level=ERROR"])
    try:
        first = kc.execute(training)            # "Run All": both cells are queued at once
        second = kc.execute("next_cell_ran = True")
        replies = {}
        while len(replies) < 2:
            msg = kc.get_shell_msg(timeout=120)
            replies[msg["parent_header"]["msg_id"]] = msg["content"]
        assert replies[first]["status"] == "error"
        assert replies[first]["ename"] == "TrainingInterrupted"
        assert "during epoch 3 of 10" in replies[first]["evalue"]
        assert replies[second]["status"] == "aborted"
        check = kc.execute("h = cu.last_history()\n"
                           "assert len(h) == 2 and h.stop_reason == 'interrupted', h\n"
                           "assert 'next_cell_ran' not in globals() and 'history' not in globals()",
                           reply=True, timeout=60)
        assert check["content"]["status"] == "ok", check["content"]
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_a_kernel_message_whose_wake_up_was_missed_is_found_within_a_slice():
    """zmq.asyncio can miss a message's wake-up; the wait then only returns when it times out.
    course run waits in short slices, so such a message costs a slice, not the cell limit."""
    import asyncio
    import time
    from queue import Empty

    from course_utils.notebooks import wake_every_second

    arrives = time.monotonic() + 0.3

    async def deaf_get_msg(timeout=None):  # sleeps its whole timeout, then looks once
        await asyncio.sleep(timeout if timeout is not None else 3600)
        if time.monotonic() >= arrives:
            return {"msg_type": "execute_reply"}
        raise Empty

    started = time.monotonic()
    assert asyncio.run(wake_every_second(deaf_get_msg, 0.1)(timeout=60)) == {"msg_type": "execute_reply"}
    assert asyncio.run(wake_every_second(deaf_get_msg, 0.1)(timeout=None)) == {"msg_type": "execute_reply"}
    assert time.monotonic() - started < 2

    async def silent(timeout=None):
        await asyncio.sleep(timeout)
        raise Empty

    started = time.monotonic()
    with pytest.raises(Empty):
        asyncio.run(wake_every_second(silent, 0.1)(timeout=0.35))
    assert 0.3 < time.monotonic() - started < 1.5  # the caller's deadline still holds
