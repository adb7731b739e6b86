"""The judge server: one trusted process per `course grade` run that imports the judge's libraries
(PyTorch, NumPy, otter, course_utils) once, then forks a fresh judge (judge.py) for each
submission. Starting a judge from nothing costs about 5 s of CPU for those imports, as much as
the sandbox's own start; forked, it starts in milliseconds.

batch.py talks to it over a socket pair made when it starts it: no name in the file system or the
network, so nothing else (a sandbox least of all) can reach it. Per submission, the grader sends
over it a fresh socket for the judge's replies, the judge's ends of the sandbox's two pipes and
a log file (as file descriptors); then, over the fresh socket, the tests. The forked judge
answers with its process id (so that the grader can kill it at the time limit), then with its
report. A judge is a child of the server, never of a sandbox; it gets its own session and its
limits after the fork, and holds the pipes of its own submission only.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

from . import wire
from .sandbox import MAX_FILE_BYTES

# What judges import, once for all of them: tests use PyTorch, NumPy, course_utils (whose synthetic
# sets import scikit-learn on first use), and PyTorch loads torch.distributed.tensor lazily
# (a second each, measured, when every judge paid for them itself).
PRELOAD = ("numpy", "torch", "torch.testing", "torch.distributed.tensor", "sklearn.datasets",
           "sklearn.model_selection", "otter.test_files.exception_test", "course_utils",
           "course_utils.grading.judge")
START_TIMEOUT = 180   # seconds for the server to import its libraries (about 5 on an idle machine)


def serve(control_fd: int) -> None:
    """The server's loop: take a submission's descriptors, fork its judge, wait for the next. It
    never computes anything itself (a process that has run PyTorch's thread pool cannot fork
    safely). It ends when the grader closes its end of the socket pair."""
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:   # an optional part missing here: the judge imports it when it needs it
            pass
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)        # the kernel reaps finished judges
    control = socket.socket(fileno=control_fd)
    print("ready", flush=True)
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(control, 1, 4)
        except OSError:
            return
        if not data:
            return                                       # the grader has gone
        if len(fds) == 4 and os.fork() == 0:
            control.close()
            _run_judge(socket.socket(fileno=fds[0]), *fds[1:])   # never returns
        for fd in fds:
            os.close(fd)


def _run_judge(connection: socket.socket, to_student: int, from_student: int, log: int) -> None:
    """In the forked child: one judge for one submission, then exit."""
    status = 1
    try:
        os.setsid()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.dup2(log, 1)                               # what the tests print goes to the log
        os.dup2(log, 2)
        os.close(log)
        stream = connection.makefile("rwb")
        wire.send(stream, {"pid": os.getpid()})
        request = wire.receive(stream)
        memory = int(request["memory_bytes"])
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_FSIZE, (MAX_FILE_BYTES, MAX_FILE_BYTES))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a too-big write fails, it does not kill
        import torch

        from . import judge

        torch.set_num_threads(max(1, int(request["threads"])))
        link = judge.Link(os.fdopen(to_student, "wb"), os.fdopen(from_student, "rb"))
        report = judge.judge(request["tests"], request["points"], link)
        wire.send(stream, {"report": report})
        status = 0
    except BaseException:  # noqa: BLE001 - the grader reads the log when no report comes
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


class JudgeServer:
    """The grader's handle on the server (started on first use, restarted if it died)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)                       # for the server's log
        self.process: subprocess.Popen | None = None
        self.control: socket.socket | None = None
        self.lock = threading.Lock()
        self.starts = 0
        self.closed = False

    def _ensure_running(self) -> None:
        """Start the server unless it runs; the caller holds self.lock."""
        if self.process is not None and self.process.poll() is None:
            return
        if self.closed:
            raise RuntimeError("the judge server was closed")
        self._kill()
        self.starts += 1
        mine, theirs = socket.socketpair()
        log_path = self.folder / f"judge-server-{self.starts}.txt"
        with open(log_path, "wb", opener=lambda path, flags: os.open(path, flags, 0o600)) as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", "import sys; from course_utils.grading import judges; judges.serve(int(sys.argv[1]))",
                 str(theirs.fileno())], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                pass_fds=(theirs.fileno(),), start_new_session=True,
                env={**os.environ, "MPLBACKEND": "Agg", "COURSE_HEADLESS": "1"})
        theirs.close()
        self.control = mine
        ready = threading.Timer(START_TIMEOUT, self.process.kill)
        ready.start()
        line = b"starting"
        while line and line.strip() != b"ready":      # (a library may print something first)
            line = self.process.stdout.readline()
        ready.cancel()
        if line.strip() != b"ready":
            raise RuntimeError(f"the judge server did not start:\n{log_path.read_text(errors='replace')[-1500:]}")

    def warm_up(self) -> None:
        """Start the server now, so that its imports overlap other work (errors wait for start())."""
        try:
            with self.lock:
                self._ensure_running()
        except Exception:  # noqa: BLE001 - start() tries again and reports it
            pass

    def start(self, to_student: int, from_student: int, log: int, tests: dict, points: dict,
              memory_bytes: int, threads: int) -> "RunningJudge":
        """Fork a judge for one submission; `to_student`, `from_student` and `log` are file
        descriptors it takes over (the caller closes its own copies after this returns)."""
        connection, theirs = socket.socketpair()
        try:
            with self.lock:
                self._ensure_running()
                socket.send_fds(self.control, [b"j"], [theirs.fileno(), to_student, from_student, log])
            theirs.close()
            stream = connection.makefile("rwb")
            pid = int(wire.receive(stream)["pid"])
            wire.send(stream, {"tests": tests, "points": points, "memory_bytes": memory_bytes,
                               "threads": threads})
        except BaseException:
            theirs.close()
            connection.close()
            raise
        return RunningJudge(pid, connection, stream)

    def close(self) -> None:
        """Stop the server (the judges it forked are stopped by the grader, each in its session)."""
        self.closed = True
        with self.lock:
            self._kill()

    def _kill(self) -> None:
        if self.control is not None:
            self.control.close()
            self.control = None
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.process.wait()


class RunningJudge:
    """One forked judge, as the grader sees it."""

    def __init__(self, pid: int, connection: socket.socket, stream):
        self.pid, self.connection, self.stream = pid, connection, stream
        self.finished = False

    def report(self, limit: int) -> dict | None:
        """The judge's report, or None when it ended without one (read its log)."""
        try:
            message = wire.receive(self.stream, limit=limit)
            report = message.get("report")
        except (OSError, EOFError, ValueError):
            report = None
        self.finished = True   # the judge sends nothing after its report, and exits
        return report if isinstance(report, dict) else None

    def kill(self) -> None:
        if not self.finished:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def close(self) -> None:
        """Kill the judge if it has not reported, else wait for its exit: nothing is left running."""
        self.kill()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.01)
        self.stream.close()
        self.connection.close()
