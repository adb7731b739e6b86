"""Homework: exercises generated from solutions with otter-grader, and a safe offline grader.

solutions/NN_*.ipynb are master notebooks in otter's assignment format; `course exercises build`
runs `otter assign` on each and writes the student version to exercises/. `course grade` grades
handed-in notebooks, each in its own sandboxed process (see grading_worker.py):

- on Linux with bubblewrap, its own PID, mount, network, IPC and user namespaces (see `_bwrap`):
  a read-only system with the instructor's folders blanked out, no network, no view of (so no
  signal to) any outside process, and nothing left running once it ends; as root, also a pids
  cgroup (a fork bomb stops at MAX_PROCESSES). Without bubblewrap, only a network namespace
  (`unshare -n`) or nothing, and a loud warning;
- a wall-clock limit (the whole process group is killed), a memory limit and a file-size limit;
- in every case Python audit hooks that refuse sockets, subprocesses, signals and ctypes;
- a private folder holding only that submission; writes anywhere else, and reads of other
  submissions, the solutions and the grader's output, are refused;
- the hidden tests reach the process only after the student's code has finished running, and the
  comparison functions the tests rely on are restored before they run.

An in-process grader cannot be made airtight against code that goes looking for the grader in
its own memory; so every submission that replaces a comparison function, touches otter, or uses
the tools such an attack needs is flagged in the gradebook and its score marked provisional.
"""

from __future__ import annotations

import concurrent.futures
import csv
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .files import write_text_atomic
from .notebooks import REPO_ROOT

SOLUTIONS_DIR = REPO_ROOT / "solutions"
EXERCISES_DIR = REPO_ROOT / "exercises"
DELIMITERS = ("# ASSIGNMENT CONFIG", "# BEGIN QUESTION", "# END QUESTION", "# BEGIN SOLUTION",
              "# END SOLUTION", "# BEGIN TESTS", "# END TESTS", "# BEGIN PROMPT", "# END PROMPT")
DEFAULT_TIMEOUT = 600
DEFAULT_MEMORY_GB = 8          # importing torch alone reserves about 5 GiB of address space
MAX_FILE_BYTES = 20 * 2**20    # a submission cannot write (or print) more than this to one file


class GradingError(RuntimeError):
    """The assignment itself (not a student's submission) is broken; the message says how."""


# ---------------------------------------------------------------------------------------------
# Building exercises from solutions
# ---------------------------------------------------------------------------------------------

@dataclass
class Autograder:
    """What `otter assign` makes of one solution notebook."""

    name: str                   # the assignment name (ASSIGNMENT CONFIG `name:`)
    solution: Path
    student_notebook: dict      # the exercise, as JSON
    filled_notebook: dict       # the exercise with the reference answers in it
    tests: dict[str, str]       # question -> otter test file (public and hidden cases)
    points: dict[str, float]    # question -> points
    manual: list[str] = field(default_factory=list)  # questions graded by a person


def _source(cell) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def assignment_name(solution_nb: dict, path: Path | None = None) -> str:
    for cell in solution_nb.get("cells", []):
        if cell.get("cell_type") == "raw" and _source(cell).lstrip().startswith("# ASSIGNMENT CONFIG"):
            match = re.search(r"^name:\s*(\S+)", _source(cell), re.M)
            if match:
                return match.group(1).strip("'\"")
    raise GradingError(f"{path or 'The solution notebook'} has no '# ASSIGNMENT CONFIG' raw cell "
                       "with a 'name:' line; add one as the notebook's first cell.")


def misplaced_delimiters(solution_nb: dict) -> list[str]:
    """Delimiters that sit in code or markdown cells. otter only honours them in raw cells, and
    a '# BEGIN SOLUTION' in a code cell makes it ship the whole solution to students, silently."""
    problems = []
    for number, cell in enumerate(solution_nb.get("cells", []), start=1):
        if cell.get("cell_type") == "raw":
            continue
        first = _source(cell).strip().splitlines()[0].strip() if _source(cell).strip() else ""
        if any(first.startswith(d) for d in DELIMITERS) and not first.startswith("# BEGIN SOLUTION NO PROMPT"):
            if cell.get("cell_type") == "code" and first.startswith(("# BEGIN SOLUTION", "# END SOLUTION")):
                # in-code markers are fine *inside* a solution block; a cell made only of the
                # marker is the mistake
                if len(_source(cell).strip().splitlines()) > 1:
                    continue
            problems.append(f"cell {number} is a {cell.get('cell_type')} cell starting with "
                            f"'{first}'; make it a raw cell")
    return problems


def _deterministic_ids(nb: dict, prefix: str) -> dict:
    for i, cell in enumerate(nb.get("cells", [])):
        cell["id"] = f"{prefix[:40]}-{i}"
        if cell.get("cell_type") == "code":
            cell["execution_count"] = None
            cell["outputs"] = []
    return nb


def build_autograder(solution: Path, run_tests: bool = False) -> Autograder:
    """Run `otter assign` on a solution notebook in a scratch folder and collect what it makes."""
    solution = Path(solution).resolve()
    solution_nb = json.loads(solution.read_text(encoding="utf-8"))
    name = assignment_name(solution_nb, solution)
    problems = misplaced_delimiters(solution_nb)
    if problems:
        raise GradingError(f"{solution.name}: " + "; ".join(problems))
    with tempfile.TemporaryDirectory(prefix="course-assign-") as tmp:
        out = Path(tmp) / "dist"
        command = [sys.executable, "-m", "otter", "assign", str(solution), str(out)]
        if not run_tests:
            command.append("--no-run-tests")
        done = subprocess.run(command, capture_output=True, text=True, cwd=tmp,
                              env={**os.environ, "COURSE_HEADLESS": "1", "MPLBACKEND": "Agg"})
        if done.returncode != 0:
            raise GradingError(f"otter assign failed on {solution.name}:\n{done.stdout[-2000:]}\n"
                               f"{done.stderr[-3000:]}")
        student = json.loads((out / "student" / solution.name).read_text(encoding="utf-8"))
        filled = json.loads((out / "autograder" / solution.name).read_text(encoding="utf-8"))
        tests = {}
        for archive in (out / "autograder").glob("*.zip"):
            with zipfile.ZipFile(archive) as zf:
                for member in zf.namelist():
                    if member.startswith("tests/") and member.endswith(".py"):
                        tests[Path(member).stem] = zf.read(member).decode()
    if not tests:
        raise GradingError(f"otter assign found no tests in {solution.name}.")
    points = {}
    for question, text in tests.items():
        match = re.search(r"^points\s*=\s*([0-9.]+)", text, re.M)
        points[question] = float(match.group(1)) if match else 1.0
    manual = []
    for cell in solution_nb["cells"]:
        text = _source(cell)
        if cell.get("cell_type") == "raw" and text.lstrip().startswith("# BEGIN QUESTION"):
            found = re.search(r"^name:\s*(\S+)", text, re.M)
            if found and re.search(r"^manual:\s*true", text, re.M | re.I):
                manual.append(found.group(1))
    return Autograder(name=name, solution=solution,
                      student_notebook=_deterministic_ids(student, name),
                      filled_notebook=_deterministic_ids(filled, name), tests=tests, points=points,
                      manual=[m for m in manual if m not in tests])


def _as_text(nb: dict) -> str:
    return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def solution_lines(solution_nb: dict) -> list[str]:
    """The lines otter removes from the student version: the answers themselves."""
    lines, inside_block = [], False
    for cell in solution_nb.get("cells", []):
        src = _source(cell)
        if cell.get("cell_type") == "raw":
            head = src.strip()
            if head.startswith("# BEGIN SOLUTION"):
                inside_block = True
            elif head.startswith("# END SOLUTION"):
                inside_block = False
            continue
        if not inside_block or cell.get("cell_type") != "code":
            continue
        marked = False
        for line in src.splitlines():
            stripped = line.strip()
            if stripped.startswith("# BEGIN SOLUTION"):
                marked = True
            elif stripped.startswith("# END SOLUTION"):
                marked = False
            elif marked or re.search(r"#\s?SOLUTION\s*$", line):
                code = re.sub(r"#\s?SOLUTION\s*$", "", line).strip()
                if len(code) >= 12 and not code.startswith("#"):
                    lines.append(code)
    return lines


def given_lines(solution_nb: dict) -> set[str]:
    """The code lines students are given: code cells outside the solution and test blocks (a fix
    of a broken script given in the exercise shares lines with it without leaking anything)."""
    given, inside = set(), False
    for cell in solution_nb.get("cells", []):
        head = _source(cell).strip()
        if cell.get("cell_type") == "raw":
            if head.startswith(("# BEGIN SOLUTION", "# BEGIN TESTS")):
                inside = True
            elif head.startswith(("# END SOLUTION", "# END TESTS")):
                inside = False
        elif cell.get("cell_type") == "code" and not inside:
            given.update(line.strip() for line in _source(cell).splitlines())
    return given


def find_solution_leaks(solution_nb: dict, exercise_nb: dict) -> list[str]:
    """Answer lines, markers or hidden tests that made it into a student notebook."""
    leaks = []
    answers = set(solution_lines(solution_nb)) - given_lines(solution_nb)
    for number, cell in enumerate(exercise_nb.get("cells", []), start=1):
        src = _source(cell)
        for marker in ("# BEGIN SOLUTION", "# END SOLUTION", "# SOLUTION", "# HIDDEN", "hidden=True"):
            if marker in src:
                leaks.append(f"cell {number} contains the marker '{marker}'")
        for line in src.splitlines():
            if line.strip() in answers:
                leaks.append(f"cell {number} contains the answer line '{line.strip()[:60]}'")
    tests = exercise_nb.get("metadata", {}).get("otter", {}).get("tests", {})
    for question, text in tests.items():
        if "hidden=True" in str(text):
            leaks.append(f"the public tests of {question} in the notebook metadata include hidden tests")
    return leaks


def solution_notebooks(folder: Path = SOLUTIONS_DIR) -> list[Path]:
    return sorted(Path(folder).glob("[0-9][0-9]_*.ipynb"))


def build_exercises(solutions: Path = SOLUTIONS_DIR, exercises: Path = EXERCISES_DIR,
                    run_tests: bool = True, echo=print) -> list[Path]:
    """Regenerate every exercise from its solution (and check the solution passes its tests)."""
    written = []
    for solution in solution_notebooks(solutions):
        echo(f"otter assign {solution.name}" + (" (running its tests)" if run_tests else ""), flush=True)
        grader = build_autograder(solution, run_tests=run_tests)
        solution_nb = json.loads(solution.read_text(encoding="utf-8"))
        leaks = find_solution_leaks(solution_nb, grader.student_notebook)
        if leaks:
            raise GradingError(f"{solution.name}: the student version would leak the solution: "
                               + "; ".join(leaks))
        target = Path(exercises) / solution.name
        write_text_atomic(target, _as_text(grader.student_notebook))
        written.append(target)
    return written


def check_exercises(solutions: Path = SOLUTIONS_DIR, exercises: Path = EXERCISES_DIR) -> list[str]:
    """Problems CI must fail on: a stale or missing exercise, a leaked solution, a stray exercise."""
    problems = []
    names = set()
    for solution in solution_notebooks(solutions):
        names.add(solution.name)
        target = Path(exercises) / solution.name
        try:
            grader = build_autograder(solution)
        except GradingError as err:
            problems.append(str(err))
            continue
        if not target.exists():
            problems.append(f"exercises/{solution.name} is missing. Fix: course exercises build")
            continue
        exercise_nb = json.loads(target.read_text(encoding="utf-8"))
        if target.read_text(encoding="utf-8") != _as_text(grader.student_notebook):
            problems.append(f"exercises/{solution.name} is stale: it differs from what "
                            f"solutions/{solution.name} generates. Fix: course exercises build")
        solution_nb = json.loads(solution.read_text(encoding="utf-8"))
        problems += [f"exercises/{solution.name}: {leak}" for leak in find_solution_leaks(solution_nb, exercise_nb)]
    for exercise in Path(exercises).glob("*.ipynb"):
        if exercise.name not in names:
            problems.append(f"exercises/{exercise.name} has no solution in solutions/.")
    return problems


# ---------------------------------------------------------------------------------------------
# Grading
# ---------------------------------------------------------------------------------------------

@dataclass
class GradeResult:
    student: str
    submission: Path
    assignment: str | None
    status: str                               # graded / timeout / invalid / error
    scores: dict[str, float] = field(default_factory=dict)
    possible: float = 0.0
    flags: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)
    seconds: float = 0.0
    manual: list[str] = field(default_factory=list)   # questions the instructor grades by hand
    fingerprint: str = ""                             # what was graded: see _fingerprint

    @property
    def total(self) -> float:
        return sum(self.scores.values())

    @property
    def provisional(self) -> bool:
        return bool(self.flags)


SANDBOX_UID = 61000            # the user id submissions see inside the sandbox (in a user namespace)
MAX_PROCESSES = 512            # threads included: a fork bomb stops here, where a pids cgroup can be made
PIDS_CGROUP = Path("/sys/fs/cgroup/pids")   # cgroup v1 hierarchy; v2 systems use /sys/fs/cgroup itself
_ISOLATION: str | None = None


def _bwrap(sandbox: Path, hidden: list[Path]) -> list[str]:
    """bubblewrap: new PID, mount, network, IPC, UTS and user namespaces; the whole system
    read-only; /tmp and every hidden folder an empty tmpfs; only `sandbox` writable; no
    capabilities. When its first process ends, the kernel kills everything else in the PID
    namespace, and no process outside it can be named, so none can be signalled."""
    command = ["bwrap", "--unshare-all", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
               "--die-with-parent", "--new-session", "--ro-bind", "/", "/",
               "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    for folder in hidden:
        command += ["--tmpfs", str(folder)]
    command += ["--bind", str(sandbox), str(sandbox), "--chdir", str(sandbox)]
    return command + ["--"]


def isolation() -> str:
    """The strongest isolation this system allows: 'namespaces' (bubblewrap, see _bwrap),
    'network only' (`unshare -n`: no network, but the same processes and files), or 'none'.
    Python audit hooks (grading_worker.py) apply in every case."""
    global _ISOLATION
    if _ISOLATION is None:
        _ISOLATION = "none"
        if sys.platform.startswith("linux"):
            with tempfile.TemporaryDirectory(prefix="course-probe-") as probe:
                os.chmod(probe, 0o777)
                candidates = []
                if shutil.which("bwrap"):
                    candidates.append(("namespaces", _bwrap(Path(probe), [])))
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


def _isolation_prefix(sandbox: Path, hidden: list[Path]) -> list[str]:
    kind = isolation()
    if kind == "namespaces":
        return _bwrap(sandbox, hidden)
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
    return (f"WARNING: bubblewrap cannot run here, so submissions get {weaker}: they run as this user, "
            "see the same processes and files, and are held back only by Python audit hooks. "
            "Install it (Debian/Ubuntu: apt-get install bubblewrap) and grade on Linux for the full sandbox.")


def _hidden_folders(forbidden: list[str], sandbox: Path) -> list[Path]:
    """The instructor's folders to blank out in the sandbox's view, except any that holds what
    the worker itself must run (Python, the course package, the dataset) or the sandbox."""
    from .data import find_fashion_mnist

    needed = [Path(sys.prefix).resolve(), Path(sys.executable).resolve(), Path(__file__).resolve().parent,
              sandbox.resolve()]
    dataset = find_fashion_mnist()
    if dataset:
        needed.append(Path(dataset).resolve())
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


def _process_cgroup(name: str) -> Path | None:
    """A pids cgroup holding at most MAX_PROCESSES tasks, or None where none can be made."""
    for root in (PIDS_CGROUP, Path("/sys/fs/cgroup")):
        try:
            if root == Path("/sys/fs/cgroup") and "pids" not in (root / "cgroup.controllers").read_text():
                continue
            group = root / name
            group.mkdir()
            (group / "pids.max").write_text(str(MAX_PROCESSES))
            return group
        except OSError:
            continue
    return None


def _kill_cgroup(group: Path | None) -> None:
    """Kill whatever the submission left in its cgroup (a process that escaped its session), then
    remove the cgroup."""
    if group is None:
        return
    for _ in range(50):                         # killed processes leave the group as they exit
        try:
            left = [int(pid) for pid in (group / "cgroup.procs").read_text().split()]
            if not left:
                group.rmdir()
                return
            for pid in left:
                os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass
        time.sleep(0.1)


_LAUNCH = """
import os, resource, signal, sys
memory, files, cgroup, *command = sys.argv[1:]
if cgroup:
    with open(os.path.join(cgroup, "cgroup.procs"), "w") as procs:
        procs.write(str(os.getpid()))
resource.setrlimit(resource.RLIMIT_AS, (int(memory), int(memory)))
resource.setrlimit(resource.RLIMIT_FSIZE, (int(files), int(files)))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
os.execvp(command[0], command)
"""


def limited(command: list[str], memory_bytes: int, cgroup: Path | None) -> list[str]:
    """`command` run under the limits: joins the pids cgroup (every process it starts stays in
    it), caps address space and file size, no core dumps, and a too-big write fails instead of
    killing. A small launcher sets them and execs `command`; unlike Popen's preexec_fn it is safe
    when several submissions are started from several threads (--jobs)."""
    return [sys.executable, "-I", "-S", "-c", _LAUNCH, str(memory_bytes), str(MAX_FILE_BYTES),
            str(cgroup or ""), *command]


_RUNNING: set = set()          # the sandboxes running now, stopped together on Ctrl-C
_RUNNING_LOCK = threading.Lock()


def _stop_running() -> None:
    with _RUNNING_LOCK:
        for proc in list(_RUNNING):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _run_worker(submission_nb: bytes, grader: Autograder, timeout: float, memory_gb: float,
                forbidden: list[str], scratch: Path) -> tuple[str, dict | None, str]:
    """Run one submission in its sandbox. Returns (status, report or None, explanation)."""
    from .data import find_fashion_mnist

    sandbox = Path(tempfile.mkdtemp(prefix="submission-", dir=scratch / "sandboxes"))
    (sandbox / "tmp").mkdir()
    notebook = sandbox / "submission.ipynb"
    notebook.write_bytes(submission_nb)
    dataset = find_fashion_mnist()
    (sandbox / "tmp" / "matplotlib").mkdir()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(sandbox),
        "TMPDIR": str(sandbox / "tmp"), "MPLBACKEND": "Agg", "COURSE_HEADLESS": "1",
        "MPLCONFIGDIR": str(sandbox / "tmp" / "matplotlib"), "PYTHONDONTWRITEBYTECODE": "1",
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        **({"COURSE_DATA_DIR": str(dataset)} if dataset else {}),
    }
    prefix = _isolation_prefix(sandbox, _hidden_folders(forbidden, sandbox))
    cgroup = _process_cgroup(f"course-grade-{os.getpid()}-{sandbox.name}")
    command = limited(prefix + [sys.executable, "-m", "course_utils.grading_worker",
                                str(sandbox), str(notebook), json.dumps(forbidden)],
                      int(memory_gb * 2**30), cgroup)
    token = secrets.token_hex(16)
    payload = json.dumps({"token": token, "tests": grader.tests, "points": grader.points})
    stderr_path = scratch / f"stderr-{sandbox.name}.txt"
    timed_out = threading.Event()
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=stderr, cwd=sandbox, env=env, start_new_session=True)
        with _RUNNING_LOCK:
            _RUNNING.add(proc)

        def kill():
            timed_out.set()
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            ready = proc.stdout.readline(4096)
            if ready.strip() == b"READY":
                try:
                    proc.stdin.write(payload.encode())
                    proc.stdin.close()
                except (BrokenPipeError, OSError):
                    pass
            rest = proc.stdout.read(4 * 2**20)
            proc.wait()
        finally:
            timer.cancel()
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            with _RUNNING_LOCK:
                _RUNNING.discard(proc)
            _kill_cgroup(cgroup)
    shutil.rmtree(sandbox, ignore_errors=True)
    if timed_out.is_set():
        return "timeout", None, f"stopped after the time limit of {timeout:g} s (an endless loop?)"
    reports = []
    for line in rest.decode(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("token") == token:
            reports.append(record)
    if len(reports) == 1:
        return "graded", reports[0], ""
    if len(reports) > 1:
        return "error", None, "the grader received more than one result: the submission forged one"
    tail = stderr_path.read_text(errors="replace")[-800:]
    why = "the grading process ended without a result"
    if proc.returncode and proc.returncode < 0:
        why += f" (killed by signal {-proc.returncode}"
        why += ": probably the memory limit)" if proc.returncode == -signal.SIGKILL else ")"
    if "MemoryError" in tail or "Cannot allocate memory" in tail:
        why += f"; it ran out of memory (limit {memory_gb:g} GiB)"
    return "error", None, why + (f"\n{tail}" if tail.strip() else "")


def _student_names(paths: list[Path]) -> list[str]:
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    return [f"{p.parent.name}/{p.stem}" for p in paths]


def _expand(submissions) -> list[Path]:
    paths = []
    for item in submissions:
        item = Path(item)
        if item.is_dir():
            paths += sorted(p for p in item.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
        else:
            paths.append(item)
    return paths


def _flags(report: dict) -> list[str]:
    flags = []
    if report["replaced"]:
        flags.append("replaced functions the grader relies on: " + ", ".join(report["replaced"][:8]))
    if report["blocked"]:
        flags.append("attempted something the sandbox refused: " + "; ".join(report["blocked"][:3]))
    if report["suspicious"]:
        flags.append("uses names associated with tampering: " + ", ".join(report["suspicious"][:8]))
    return flags


def _fingerprint(raw: bytes, solutions_digest: str, settings: tuple) -> str:
    """Changes when the submission, any solution or a grading setting does: a saved result with
    the same fingerprint is the result grading again would give, so a rerun keeps it."""
    return hashlib.sha256(raw + solutions_digest.encode() + repr(settings).encode()).hexdigest()


def _load_saved(state: Path) -> dict[str, GradeResult]:
    """The results a previous, possibly interrupted, run saved in OUTPUT/results.json."""
    try:
        saved = json.loads(state.read_text(encoding="utf-8"))
        return {name: GradeResult(**{**row, "submission": Path(row["submission"])})
                for name, row in saved.items()}
    except (OSError, ValueError, TypeError, KeyError):
        return {}


def grade(submissions, output_dir="grades", timeout: float = DEFAULT_TIMEOUT,
          memory_gb: float = DEFAULT_MEMORY_GB, assignment: str | None = None,
          solutions: Path = SOLUTIONS_DIR, jobs: int | None = None, regrade: bool = False,
          echo=print) -> list[GradeResult]:
    """Grade each submission in its own sandbox, `jobs` at a time (default: one per core);
    gradebook.csv, feedback/<student>.md and results.json are rewritten, atomically, as each
    submission finishes. Rerunning the same command keeps every result whose submission,
    solutions and settings are unchanged (an interrupted batch resumes); `regrade` redoes all."""
    paths = _expand(submissions)
    if not paths:
        raise GradingError("No submissions given: pass notebook files or folders of them.")
    if jobs is not None and jobs < 1:
        raise GradingError(f"--jobs {jobs}: give 1 or more submissions to grade at once.")
    output = Path(output_dir).resolve()
    by_name = {}
    for solution in solution_notebooks(solutions):
        by_name[assignment_name(json.loads(solution.read_text(encoding="utf-8")), solution)] = solution
    solutions_digest = hashlib.sha256(b"".join(p.read_bytes() for p in by_name.values())).hexdigest()
    settings = (timeout, memory_gb, assignment)
    warning = isolation_warning()
    if warning:
        echo(warning)
    forbidden = sorted({str(p.resolve().parent) for p in paths} | {str(output), str(Path(solutions).resolve())})
    saved = {} if regrade else _load_saved(output / "results.json")
    students = _student_names(paths)
    done: dict[str, GradeResult] = {}
    graders: dict[str, Autograder] = {}
    build_lock, write_lock = threading.Lock(), threading.Lock()
    stopping = threading.Event()

    def finish(result: GradeResult, kept: bool) -> None:
        with write_lock:
            if stopping.is_set():  # cut short by the interruption: graded again on the rerun
                return
            done[result.student] = result
            write_gradebook([done[s] for s in students if s in done], output, feedback=[result])
            echo(f"{result.student:<24} {result.status:<8} {result.total:g}/{result.possible:g}"
                 + ("  PROVISIONAL" if result.provisional else "")
                 + ("  (kept from the last run)" if kept else f"  ({result.seconds:.1f} s)"), flush=True)

    def one(student: str, path: Path, scratch: Path) -> None:
        raw = path.read_bytes() if path.is_file() else b""
        fingerprint = _fingerprint(raw, solutions_digest, settings)
        old = saved.get(student)
        if old is not None and old.fingerprint == fingerprint:
            return finish(old, kept=True)
        result = GradeResult(student=student, submission=path, assignment=None, status="error",
                             fingerprint=fingerprint)
        try:
            _grade_one(result, path, assignment, by_name, graders, build_lock, timeout, memory_gb,
                       forbidden, scratch)
        except GradingError:
            raise
        except Exception as err:  # noqa: BLE001 - one submission never stops the batch
            result.status, result.notes = "error", [f"the grader failed on this submission: {err}"]
        finish(result, kept=False)

    with tempfile.TemporaryDirectory(prefix="course-grade-") as scratch_dir:
        scratch = Path(scratch_dir)
        (scratch / "sandboxes").mkdir()
        forbidden.append(str(scratch))
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs or os.cpu_count() or 1))
        try:
            for future in [pool.submit(one, student, path, scratch) for student, path in zip(students, paths)]:
                future.result()
        except BaseException:  # Ctrl-C, or a GradingError: stop at once, keep what finished
            stopping.set()
            pool.shutdown(wait=False, cancel_futures=True)
            _stop_running()
            raise
        finally:
            pool.shutdown(wait=True)
    return [done[s] for s in students]


def _grade_one(result, path, assignment, by_name, graders, build_lock, timeout, memory_gb, forbidden,
               scratch):
    import nbformat

    raw = path.read_bytes() if path.is_file() else None
    if raw is None:
        result.status, result.notes = "invalid", [f"{path} is not a file"]
        return
    try:
        nb = nbformat.reads(raw.decode("utf-8"), as_version=4)
        nbformat.validate(nb)
    except Exception as err:  # noqa: BLE001 - not JSON, not UTF-8, not a notebook
        result.status = "invalid"
        result.notes = [f"not a valid Jupyter notebook ({type(err).__name__}: {str(err)[:200]}). "
                        "Hand in the .ipynb file saved by Jupyter."]
        return
    name = assignment or nb.get("metadata", {}).get("otter", {}).get("assignment_name")
    if name is None:
        match = re.match(r"(\d\d)_", path.name)
        candidates = [n for n, s in by_name.items() if match and s.name.startswith(match.group(0))]
        name = candidates[0] if len(candidates) == 1 else None
    if name not in by_name:
        result.status = "invalid"
        result.notes = [f"cannot tell which assignment this is (found {name!r}); known: "
                        f"{', '.join(sorted(by_name))}. Fix: course grade --assignment NAME ..."]
        return
    with build_lock:  # built once per assignment, whichever thread needs it first
        if name not in graders:
            graders[name] = build_autograder(by_name[name])
    grader = graders[name]
    result.assignment = name
    result.manual = list(grader.manual)
    result.possible = sum(grader.points.values())
    result.scores = {q: 0.0 for q in sorted(grader.tests)}
    started = time.perf_counter()  # the submission's own run, not the shared autograder build
    status, report, why = _run_worker(raw, grader, timeout, memory_gb, forbidden, scratch)
    result.seconds = time.perf_counter() - started
    result.status = status
    if why:
        result.notes.append(why)
    if report is None:
        return
    result.details = report
    for question, outcome in report["questions"].items():
        if question in result.scores:
            result.scores[question] = float(outcome["score"])
    result.flags = _flags(report)
    result.notes += [f"error in {e}" for e in report["cell_errors"][:10]]


def feedback_text(result: GradeResult) -> str:
    lines = [f"# Feedback for {result.student}", ""]
    lines.append(f"Assignment: {result.assignment or 'unknown'}  ")
    lines.append(f"Score: {result.total:g} / {result.possible:g} ({result.status})")
    if result.provisional:
        lines += ["", "**This score is provisional**: your instructor will review it, because:"]
        lines += [f"- {flag}" for flag in result.flags]
    for question, outcome in result.details.get("questions", {}).items():
        lines += ["", f"## {question}: {outcome['score']:g} / {outcome['possible']:g}"]
        if outcome.get("error"):
            lines.append(f"- the tests could not run: {outcome['error']}")
        for test in outcome["tests"]:
            if test["hidden"]:
                lines.append(f"- hidden test: {'passed' if test['passed'] else 'failed'}")
            else:
                lines.append(f"- public test {test['name']}: {'passed' if test['passed'] else 'failed'}")
                if not test["passed"]:
                    message = test["message"].replace("❌ Test case failed", "").strip()[-400:]
                    lines += ["", "  ```", *[f"  {l}" for l in message.splitlines()], "  ```"]
    if result.notes:
        lines += ["", "## Notes", *[f"- {n}" for n in result.notes]]
    if result.manual:
        lines += ["", f"Questions graded by your instructor: {', '.join(result.manual)}."]
    return "\n".join(lines) + "\n"


def write_gradebook(results: list[GradeResult], output: Path, feedback=None) -> Path:
    """gradebook.csv (one row per submission), results.json (what a rerun resumes from) and
    feedback/<student>.md for each of `feedback` (default: every result), each written atomically."""
    questions = []
    for r in results:
        questions += [q for q in r.scores if q not in questions]
    questions.sort(key=lambda q: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", q)])
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["student", "assignment", *questions, "total", "possible", "status",
                     "provisional", "notes"])
    for r in results:
        writer.writerow([r.student, r.assignment or "", *[f"{r.scores[q]:g}" if q in r.scores else ""
                                                          for q in questions],
                         f"{r.total:g}", f"{r.possible:g}", r.status, "yes" if r.provisional else "no",
                         " | ".join((r.flags + r.notes))[:500].replace("\n", " ")])
    output.mkdir(parents=True, exist_ok=True)
    write_text_atomic(output / "gradebook.csv", buffer.getvalue())
    for r in results if feedback is None else feedback:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", r.student)
        write_text_atomic(output / "feedback" / f"{safe}.md", feedback_text(r))
    write_text_atomic(output / "results.json", json.dumps(
        {r.student: {**asdict(r), "submission": str(r.submission)} for r in results}))
    return output / "gradebook.csv"
