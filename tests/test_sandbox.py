"""The grader's operating-system sandbox, tested below Python: shell commands that no audit hook
sees run inside it, as a submission that escaped its interpreter would.

These cases need bubblewrap (Debian's `bubblewrap`, which `make test` installs) and skip, saying
why, where the system cannot make namespaces. Signals aimed at the grader are only ever sent from
inside the PID namespace, where the grader's process cannot be named.
"""
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

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


@needs_namespaces
def test_other_submissions_are_invisible_wherever_the_scratch_folder_is(tmp_path):
    """The grader's scratch folder holds every running sandbox. Under /tmp the sandbox's own /tmp
    hides it; elsewhere (TMPDIR=/var/tmp, say) it is blanked out and only the sandbox's own
    folder is mounted back into it."""
    import tempfile
    scratch = Path(tempfile.mkdtemp(prefix="course-scratch-", dir="/var/tmp" if Path("/var/tmp").is_dir() else REPO_ROOT))
    try:
        mine, other = scratch / "sandboxes" / "submission-a", scratch / "sandboxes" / "submission-b"
        mine.mkdir(parents=True)
        other.mkdir(parents=True)
        (other / "answers.txt").write_text("the other student's work")
        (scratch / "judge-log.txt").write_text("a judge's log")
        hidden = grading.hidden_folders([str(scratch)], mine)
        assert scratch in hidden
        command = grading.bwrap(mine, hidden) + ["/bin/sh", "-c", f"""
            ls -A {scratch / 'sandboxes'}; cat {other / 'answers.txt'} 2>/dev/null || echo "unreadable"
            ls -A {scratch}; echo ok > own.txt && cat own.txt"""]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=mine)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["submission-a", "unreadable", "sandboxes", "ok"], done.stdout
        assert (mine / "own.txt").read_text() == "ok\n"
    finally:
        shutil.rmtree(scratch)


@needs_namespaces
def test_what_the_worker_needs_stays_visible_when_it_lies_in_tmp(tmp_path, monkeypatch):
    """A course cloned into /tmp: the sandbox's /tmp is empty, but its venv and package are bound
    back into it, read-only."""
    needed = tmp_path / "venv"
    needed.mkdir()
    (needed / "python.txt").write_text("here")
    monkeypatch.setattr(grading, "needed_paths", lambda: [needed])
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    command = grading.bwrap(sandbox, []) + ["/bin/sh", "-c", f"cat {needed / 'python.txt'}; "
                                            f"echo x > {needed / 'new.txt'} 2>/dev/null || echo ' read-only'"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=sandbox)
    assert done.stdout == "here read-only\n", (done.stdout, done.stderr)


def cgroups_or_skip(controller):
    groups = grading.submission_cgroups(f"course-test-{uuid.uuid4().hex[:8]}", 2 * 2**30)
    if not any(controller in str(group) or (group / f"{controller}.max").exists() for group in groups):
        grading.kill_cgroups(groups)
        pytest.skip(f"no {controller} cgroup can be made here (not root, or cgroups read-only)")
    return groups


def test_the_whole_sandbox_gets_at_most_its_share_of_the_cores():
    """Two busy processes in a sandbox allowed one core: together they get about one core's time
    (on an idle 2-core machine, about two without the cgroup)."""
    groups = grading.submission_cgroups(f"course-test-{uuid.uuid4().hex[:8]}", 2 * 2**30, cpus=1)
    if not any("cpu" in str(group) or (group / "cpu.max").exists() for group in groups):
        grading.kill_cgroups(groups)
        pytest.skip("no cpu cgroup can be made here (not root, or cgroups read-only)")
    spin = """
import os, time
pid = os.fork()
end = time.monotonic() + 1.5
while time.monotonic() < end:
    pass
if pid == 0:
    os._exit(0)
os.waitpid(pid, 0)
print(sum(os.times()[:4]), flush=True)    # this process's and its child's CPU seconds
"""
    try:
        done = subprocess.run(grading.limited([sys.executable, "-c", spin], 8 * 2**30, groups),
                              capture_output=True, text=True, timeout=60)
        cpu_seconds = float(done.stdout.split()[-1])
    finally:
        grading.kill_cgroups(groups)
    assert cpu_seconds < 1.5 * 1.3, f"{cpu_seconds:.2f} CPU seconds in 1.5 s on one core"


def test_a_fork_bomb_stops_at_the_process_limit(tmp_path):
    groups = cgroups_or_skip("pids")
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
        done = subprocess.run(grading.limited([sys.executable, "-c", bomb], 8 * 2**30, groups),
                              capture_output=True, text=True, timeout=60, start_new_session=True)
        started = int(done.stdout.split()[-1])
        assert started < grading.MAX_PROCESSES, started
    finally:
        grading.kill_cgroups(groups)
    time.sleep(0.3)
    assert not still_running(marker) and not any(group.exists() for group in groups)


def test_the_memory_limit_holds_for_the_whole_sandbox_not_each_process(tmp_path):
    """Four processes of 1 GiB each, every one within the per-process limit of 8 GiB: together
    they pass the sandbox's 2 GiB, and the memory cgroup stops them."""
    groups = cgroups_or_skip("memory")
    hog = """
import os, sys, time
children = []
for _ in range(4):
    pid = os.fork()
    if pid == 0:
        block = bytearray(2**30)              # 1 GiB, touched page by page
        for i in range(0, len(block), 4096):
            block[i] = 1
        os._exit(0)
    children.append(pid)
killed = sum(os.WIFSIGNALED(os.waitpid(pid, 0)[1]) for pid in children)
print(killed, flush=True)
"""
    try:
        done = subprocess.run(grading.limited([sys.executable, "-c", hog], 8 * 2**30, groups),
                              capture_output=True, text=True, timeout=120, start_new_session=True)
        assert int(done.stdout.split()[-1]) >= 1, "4 GiB in four processes fitted a 2 GiB sandbox"
    finally:
        grading.kill_cgroups(groups)
    assert not any(group.exists() for group in groups)


def test_the_warning_names_the_fix_when_namespaces_are_missing(monkeypatch):
    monkeypatch.setattr(grading, "_ISOLATION", "network only")
    warning = grading.isolation_warning()
    assert warning.startswith("WARNING") and "apt-get install bubblewrap" in warning
    monkeypatch.setattr(grading, "_ISOLATION", "namespaces")
    assert grading.isolation_warning() is None
