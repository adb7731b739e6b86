"""The grader's operating-system sandbox, tested below Python: shell commands that no audit hook
sees run inside it, as a submission that escaped its interpreter would.

These cases need bubblewrap (Debian's `bubblewrap`, which `make test` installs) and skip, saying
why, where the system cannot make namespaces. Signals aimed at the grader are only ever sent from
inside the PID namespace, where the grader's process cannot be named.
"""
import os
import subprocess
import sys
import time
import uuid

import pytest

from course_utils.grading import sandbox as grading
from course_utils.notebooks import REPO_ROOT

needs_namespaces = pytest.mark.skipif(
    grading.isolation() != "namespaces",
    reason=f"bubblewrap cannot make namespaces here (isolation: {grading.isolation()}); "
           "install it with: apt-get install bubblewrap")


def run_inside(tmp_path, script, timeout=60):
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir(exist_ok=True)
    hidden = grading.hidden_folders([str(REPO_ROOT / "solutions")], sandbox)
    command = grading.bwrap(sandbox, hidden) + ["/bin/sh", "-c", script]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=sandbox)


def still_running(marker):
    return subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 0


@needs_namespaces
def test_nothing_outside_can_be_signalled_and_nothing_is_left_running(tmp_path):
    marker = f"course-sandbox-{uuid.uuid4().hex}"
    done = run_inside(tmp_path, f"""
        kill -9 {os.getpid()} {os.getppid()} 2>/dev/null; echo "kill outside: $?"
        kill -9 -1 2>/dev/null
        setsid bash -c 'exec -a {marker} sleep 600' </dev/null >/dev/null 2>&1 &
        sleep 0.5
        ls /proc | grep -c '^[0-9]'
    """)
    assert done.returncode == 0, done.stderr
    assert "kill outside: 1" in done.stdout                   # no such process in its namespace
    assert int(done.stdout.split()[-1]) <= 6                   # it sees only its own few processes
    time.sleep(0.5)
    assert not still_running(marker), "a detached child outlived the sandbox"


@needs_namespaces
def test_the_instructors_files_are_invisible_and_the_system_read_only(tmp_path):
    (tmp_path / "sandbox").mkdir()
    done = run_inside(tmp_path, f"""
        ls -A {REPO_ROOT / 'solutions'} | wc -l
        echo x > {REPO_ROOT / 'escape.txt'} 2>/dev/null || echo "write refused"
        echo ok > own.txt && cat own.txt
        tail -n +3 /proc/net/dev | wc -l
        ls /tmp | wc -l
    """)
    lines = done.stdout.split()
    assert lines[0] == "0", "the solutions folder must look empty"
    assert "refused" in done.stdout and not (REPO_ROOT / "escape.txt").exists()
    assert "ok" in lines and (tmp_path / "sandbox" / "own.txt").read_text() == "ok\n"
    assert lines[-2] == "1"                                     # only the loopback interface
    assert lines[-1] == "1"                                     # /tmp holds only its own folder
    assert REPO_ROOT not in grading.hidden_folders([str(REPO_ROOT)], tmp_path), \
        "a folder holding the course package itself is never hidden (the worker could not start)"


def test_a_fork_bomb_stops_at_the_process_limit(tmp_path):
    group = grading.process_cgroup(f"course-test-{uuid.uuid4().hex[:8]}")
    if group is None:
        pytest.skip("no pids cgroup can be made here (not root, or cgroups read-only)")
    marker = f"course-bomb-{uuid.uuid4().hex}"
    bomb = f"""
import os, sys, time
started = 0
for _ in range({grading.MAX_PROCESSES + 100}):
    try:
        if os.fork() == 0:
            quiet = os.open(os.devnull, os.O_WRONLY)
            os.dup2(quiet, 1); os.dup2(quiet, 2)     # let the test read the count without waiting
            os.execvp("bash", ["bash", "-c", "exec -a {marker} sleep 600"])
        started += 1
    except OSError:        # fork refused: the limit holds
        break
print(started, flush=True)
"""
    try:
        done = subprocess.run(grading.limited([sys.executable, "-c", bomb], 8 * 2**30, group),
                              capture_output=True, text=True, timeout=60, start_new_session=True)
        started = int(done.stdout.split()[-1])
        assert started < grading.MAX_PROCESSES, started
    finally:
        grading.kill_cgroup(group)
    time.sleep(0.3)
    assert not still_running(marker) and not group.exists()


def test_the_warning_names_the_fix_when_namespaces_are_missing(monkeypatch):
    monkeypatch.setattr(grading, "_ISOLATION", "network only")
    warning = grading.isolation_warning()
    assert warning.startswith("WARNING") and "apt-get install bubblewrap" in warning
    monkeypatch.setattr(grading, "_ISOLATION", "namespaces")
    assert grading.isolation_warning() is None
