"""The sandbox one submission runs in, and the limits around it (used by batch.py).

- On Linux with bubblewrap, its own PID, mount, network, IPC, UTS and user namespaces (`bwrap`):
  a read-only system with the instructor's folders blanked out, no network, no view of (so no
  signal to) any outside process, and nothing left running once it ends. Without bubblewrap,
  only a network namespace (`unshare -n`) or nothing, and a loud warning (`isolation_warning`).
- As root, cgroups for the whole sandbox (`submission_cgroups`): at most MAX_PROCESSES tasks (a
  fork bomb stops there), the memory limit, and its share of the cores (cores / jobs); whatever
  is left in them when it ends is killed.
- In every case: a wall-clock limit (batch.py kills the whole process group), an address-space
  limit per process and a file-size limit (`limited`), and the worker's Python audit hooks.

None of this decides a score: the judge does, outside (judge.py). The sandbox keeps a submission
from harming the machine, the grader, the instructor's files and the other submissions.
"""

from __future__ import annotations

import functools
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from .assignments import REPO_ROOT

MAX_FILE_BYTES = 20 * 2**20    # a submission cannot write (or print) more than this to one file
SANDBOX_UID = 61000            # the user id submissions see inside the sandbox (in a user namespace)
MAX_PROCESSES = 512            # threads included: a fork bomb stops here, where a pids cgroup can be made
CGROUP_ROOT = Path("/sys/fs/cgroup")      # v1: one hierarchy per controller below it; v2: itself
_ISOLATION: str | None = None


def bwrap(sandbox: Path, hidden: list[Path]) -> list[str]:
    """bubblewrap: new PID, mount, network, IPC, UTS and user namespaces; the whole system
    read-only; /tmp and every hidden folder an empty tmpfs; only `sandbox` writable; no
    capabilities. When its first process ends, the kernel kills everything else in the PID
    namespace, and no process outside it can be named, so none can be signalled."""
    command = ["bwrap", "--unshare-all", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
               "--die-with-parent", "--new-session", "--ro-bind", "/", "/",
               "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    for path in needed_paths():               # a course cloned into /tmp still runs (read-only)
        if Path("/tmp") in path.parents:
            command += ["--ro-bind", str(path), str(path)]
    for folder in hidden:
        command += ["--tmpfs", str(folder)]
    command += ["--bind", str(sandbox), str(sandbox), "--chdir", str(sandbox)]
    return command + ["--"]


def isolation() -> str:
    """The strongest isolation this system allows: 'namespaces' (bubblewrap, see bwrap),
    'network only' (`unshare -n`: no network, but the same processes and files), or 'none'.
    Python audit hooks (worker.py) apply in every case."""
    global _ISOLATION
    if _ISOLATION is None:
        _ISOLATION = "none"
        if sys.platform.startswith("linux"):
            with tempfile.TemporaryDirectory(prefix="course-probe-") as probe:
                os.chmod(probe, 0o777)
                candidates = []
                if shutil.which("bwrap"):
                    candidates.append(("namespaces", bwrap(Path(probe), [])))
                if shutil.which("unshare"):
                    candidates += [("network only", ["unshare", "-n"]), ("network only", ["unshare", "-rn"])]
                for kind, prefix in candidates:
                    try:
                        if subprocess.run(prefix + ["true"], capture_output=True, timeout=20).returncode == 0:
                            _ISOLATION = kind
                            break
                    except (OSError, subprocess.TimeoutExpired):
                        pass
    return _ISOLATION


def isolation_prefix(sandbox: Path, hidden: list[Path]) -> list[str]:
    kind = isolation()
    if kind == "namespaces":
        return bwrap(sandbox, hidden)
    if kind == "network only":
        for prefix in (["unshare", "-n"], ["unshare", "-rn"]):
            if subprocess.run(prefix + ["true"], capture_output=True, timeout=20).returncode == 0:
                return prefix
    return []


def isolation_warning() -> str | None:
    """What an instructor must be told before grading on a system without namespaces."""
    kind = isolation()
    if kind == "namespaces":
        return None
    weaker = {"network only": "only a network namespace (unshare -n)", "none": "no namespaces at all"}[kind]
    if unprivileged_user() is not None:
        who = ("they run as a user of their own (so the file system's permissions hold), see the same "
               "processes and files as that user, and are otherwise held back only by Python audit hooks")
    else:
        who = ("they run as this user, see the same processes and files, and are held back only by "
               "Python audit hooks")
    return (f"WARNING: bubblewrap cannot run here, so submissions get {weaker}: {who}. "
            "Install it (Debian/Ubuntu: apt-get install bubblewrap) and grade on Linux for the full sandbox.")


def needed_paths() -> list[Path]:
    """What the worker must see to run: Python, the venv, the course package, the dataset."""
    from ..data import find_fashion_mnist

    needed = [Path(sys.prefix).resolve(), Path(sys.executable).resolve(), Path(__file__).resolve().parents[1]]
    dataset = find_fashion_mnist()
    if dataset:
        needed.append(Path(dataset).resolve())
    return needed


def hidden_folders(forbidden: list[str], sandbox: Path) -> list[Path]:
    """The instructor's folders to blank out in the sandbox's view, except any that holds what
    the worker itself must run (Python, the course package, the dataset). A folder that holds the
    sandbox is blanked out too (the grader's scratch folder, with the other submissions in it):
    bwrap mounts the sandbox back into the blank after it."""
    needed = needed_paths()
    candidates = [Path(p) for p in forbidden] + [REPO_ROOT / name for name in ("solutions", "tests", ".git", "exercises")]
    hidden: list[Path] = []
    for folder in sorted({c.resolve() for c in candidates}, key=lambda c: len(c.parts)):
        if not folder.is_dir() or folder == Path("/") or Path("/tmp") in (folder, *folder.parents):
            continue                                        # /tmp is a fresh tmpfs already
        if any(n == folder or folder in n.parents for n in needed):
            continue
        if any(h == folder or h in folder.parents for h in hidden):
            continue
        hidden.append(folder)
    return hidden


def _make_cgroup(root: Path, name: str, settings: dict[str, str], optional=()) -> Path | None:
    """A new cgroup below `root` with `settings` written into it (those of `optional` where their
    controller is there to take them), or None where it cannot be made (not root, no such
    controller)."""
    group = root / name
    try:
        group.mkdir()
    except OSError:
        return None
    for file, value in settings.items():
        try:
            (group / file).write_text(value)
        except OSError:
            if file not in optional:
                group.rmdir()
                return None
    return group


def submission_cgroups(name: str, memory_bytes: int, cpus: int = 0) -> list[Path]:
    """The cgroups one sandbox runs in, where they can be made (as root): at most MAX_PROCESSES
    tasks; a memory limit for the whole sandbox (the per-process address-space limit alone lets
    several processes each take that much), swap included; and, with `cpus`, at most that many
    cores, so that a submission running threads on every core cannot slow the others graded
    beside it. cgroup v1 has a hierarchy per controller; v2 has one group with all of them."""
    period = 100_000
    if (CGROUP_ROOT / "cgroup.controllers").exists():               # v2
        for controller in ("pids", "memory", "cpu"):
            try:
                (CGROUP_ROOT / "cgroup.subtree_control").write_text(f"+{controller}")
            except OSError:
                pass
        settings = {"pids.max": str(MAX_PROCESSES), "memory.max": str(memory_bytes), "memory.swap.max": "0"}
        if cpus:
            settings["cpu.max"] = f"{cpus * period} {period}"
        group = _make_cgroup(CGROUP_ROOT, name, settings, optional=("memory.max", "memory.swap.max", "cpu.max"))
        return [group] if group is not None else []
    groups = [_make_cgroup(CGROUP_ROOT / "pids", name, {"pids.max": str(MAX_PROCESSES)}),
              _make_cgroup(CGROUP_ROOT / "memory", name, {"memory.limit_in_bytes": str(memory_bytes),
                                                         "memory.memsw.limit_in_bytes": str(memory_bytes)},
                           optional=("memory.memsw.limit_in_bytes",))]
    if cpus:
        groups.append(_make_cgroup(CGROUP_ROOT / "cpu", name, {"cpu.cfs_period_us": str(period),
                                                               "cpu.cfs_quota_us": str(cpus * period)}))
    return [group for group in groups if group is not None]


def kill_cgroups(groups: list[Path]) -> None:
    """Kill whatever the submission left in its cgroups (a process that escaped its session),
    then remove them."""
    for group in groups:
        for _ in range(50):                     # killed processes leave the group as they exit
            try:
                left = [int(pid) for pid in (group / "cgroup.procs").read_text().split()]
                if not left:
                    group.rmdir()
                    break
                for pid in left:
                    os.kill(pid, signal.SIGKILL)
            except (OSError, ValueError):
                pass
            time.sleep(0.1)


_LAUNCH = """
import os, resource, signal, sys
memory, files, processes, cgroups, user, *command = sys.argv[1:]
for cgroup in filter(None, cgroups.split(os.pathsep)):
    with open(os.path.join(cgroup, "cgroup.procs"), "w") as procs:
        procs.write(str(os.getpid()))
resource.setrlimit(resource.RLIMIT_AS, (int(memory), int(memory)))
resource.setrlimit(resource.RLIMIT_FSIZE, (int(files), int(files)))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
if user:
    resource.setrlimit(resource.RLIMIT_NPROC, (int(processes), int(processes)))
    os.setgroups([])
    os.setgid(int(user))
    os.setuid(int(user))
os.execvp(command[0], command)
"""


def limited(command: list[str], memory_bytes: int, cgroups: list[Path], user: int | None = None) -> list[str]:
    """`command` run under the limits: joins the cgroups (every process it starts stays in
    them), caps each process's address space and file size, no core dumps, and a too-big write
    fails instead of killing; with `user` (the grader runs as root), it also drops to that user
    id, with at most MAX_PROCESSES processes. A small launcher sets them and execs `command`;
    unlike Popen's preexec_fn it is safe when several submissions are started from several
    threads (--jobs)."""
    return [sys.executable, "-I", "-S", "-c", _LAUNCH, str(memory_bytes), str(MAX_FILE_BYTES), str(MAX_PROCESSES),
            os.pathsep.join(map(str, cgroups)), "" if user is None else str(user), *command]


_USERS = itertools.count(os.getpid())    # two graders at once start at different ids


def unprivileged_user() -> int | None:
    """The user id a sandbox runs as where bubblewrap cannot run but the grader is root (a
    Docker container, say): one of SANDBOX_UID + 1 ... + 999, a new one for each submission and
    owning nothing, so the file system's permissions stop what the audit hooks miss and no
    submission can signal or read another. None elsewhere (bubblewrap maps its own user)."""
    if isolation() == "namespaces" or not hasattr(os, "geteuid") or os.geteuid() != 0 or not _user_can_run():
        return None
    import pwd

    while True:
        user = SANDBOX_UID + 1 + next(_USERS) % 183      # 61001-61183: below systemd's dynamic users
        try:
            pwd.getpwuid(user)                            # a real account: not ours to use
        except KeyError:
            return user


@functools.lru_cache(maxsize=None)
def _user_can_run() -> bool:
    """Whether an unprivileged user can run this Python and import the course package (not where
    they live in a folder only root may enter, such as /root)."""
    from ..data import find_fashion_mnist

    dataset = find_fashion_mnist()
    check = ("import os, sys, tempfile, course_utils.grading.worker\n"
             "assert os.access(tempfile.gettempdir(), os.X_OK)\n"       # where the grader's scratch folder is
             "for name in os.listdir(sys.argv[1]) if sys.argv[1] else []:\n"
             "    open(os.path.join(sys.argv[1], name), 'rb').close()\n")   # the dataset the lessons load
    probe = limited([sys.executable, "-c", check, str(dataset or "")], 8 * 2**30, [], SANDBOX_UID)
    try:
        return subprocess.run(probe, capture_output=True, timeout=120, cwd="/").returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def kill_user_processes(user: int) -> None:
    """Kill every process of `user` (a sandbox's detached leftovers, where no PID namespace
    ends them), again until none is left (one may fork while the others die)."""
    for _ in range(100):
        found = 0
        for status in Path("/proc").glob("[0-9]*/status"):
            try:
                uid = next(line.split()[1] for line in status.read_text().splitlines() if line.startswith("Uid:"))
                if int(uid) == user:
                    os.kill(int(status.parent.name), signal.SIGKILL)
                    found += 1
            except (OSError, StopIteration, ValueError):
                continue
        if not found:
            return
        time.sleep(0.05)


_RUNNING: set = set()          # sandboxes and judges running now, stopped together on Ctrl-C
_RUNNING_LOCK = threading.Lock()
_STOPPING = threading.Event()


class Stopping(RuntimeError):
    """Grading is being interrupted: start nothing more."""


def start(command: list[str], **popen_args) -> subprocess.Popen:
    """Popen, registered for stop_running() in the same step: a sandbox started while Ctrl-C is
    being handled is either killed with the others or never started."""
    with _RUNNING_LOCK:
        if _STOPPING.is_set():
            raise Stopping("grading was interrupted")
        proc = subprocess.Popen(command, **popen_args)
        _RUNNING.add(proc)
    return proc


def track(running) -> None:
    """Register a running judge (anything with the `pid` of its own process group)."""
    with _RUNNING_LOCK:
        _RUNNING.add(running)
        if _STOPPING.is_set():
            _kill_group(running.pid)


def untrack(running) -> None:
    with _RUNNING_LOCK:
        _RUNNING.discard(running)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def stop_running() -> None:
    """Ctrl-C: kill every sandbox and judge running now, with whatever they started, and start
    no more until resume_starting()."""
    with _RUNNING_LOCK:
        _STOPPING.set()
        for running in list(_RUNNING):
            _kill_group(running.pid)


def resume_starting() -> None:
    """A new batch may start sandboxes again (after an interrupted one, in the same process)."""
    _STOPPING.clear()
