"""`course grade`: grade a batch of handed-in notebooks, each in its own sandbox, judged outside it.

For each submission, two processes:
- the sandbox (sandbox.py, worker.py) runs the student's cells and then only computes: it answers
  calls to the student's functions with plain data;
- the judge (judge.py), a trusted process the sandbox cannot reach, runs the assignment's tests,
  public and hidden, against those answers and decides the score.
Submissions are graded `jobs` at a time; the gradebook, the feedback and results.json are written
atomically as each one finishes, and a rerun resumes (see `grade`).
"""

from __future__ import annotations

import concurrent.futures
import csv
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..files import write_text_atomic
from . import sandbox as sandboxes
from .judges import JudgeServer, RunningJudge
from .assignments import SOLUTIONS_DIR, Autograder, GradingError, assignment_name, build_autograder, solution_notebooks
from .review import suspicious_names

DEFAULT_TIMEOUT = 600
DEFAULT_MEMORY_GB = 8          # importing torch alone reserves about 5 GiB of address space
MAX_REPORT_BYTES = 8 * 2**20


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



def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _run_submission(submission_nb: bytes, grader, timeout: float, memory_gb: float,
                    forbidden: list[str], scratch: Path, judges: JudgeServer,
                    threads: int) -> tuple[str, dict | None, str, str]:
    """Run one submission in its sandbox, judged by a judge forked for it, both under one
    wall-clock limit (which starts once `grader()` has the assignment's tests: the sandbox may
    start while they are still being built). Returns (status, the judge's report or None,
    explanation, the judge's log where it gave no report)."""
    from ..cpu_threads import calm_openmp_spinning
    from ..data import find_fashion_mnist

    sandbox = Path(tempfile.mkdtemp(prefix="submission-", dir=scratch / "sandboxes"))
    (sandbox / "tmp" / "matplotlib").mkdir(parents=True)
    notebook = sandbox / "submission.ipynb"
    notebook.write_bytes(submission_nb)
    dataset = find_fashion_mnist()
    env = calm_openmp_spinning({
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(sandbox),
        "TMPDIR": str(sandbox / "tmp"), "MPLBACKEND": "Agg", "COURSE_HEADLESS": "1",
        "MPLCONFIGDIR": str(sandbox / "tmp" / "matplotlib"), "PYTHONDONTWRITEBYTECODE": "1",
        "LANG": os.environ.get("LANG", "C.UTF-8"), "OMP_NUM_THREADS": str(threads),
        **({"COURSE_DATA_DIR": str(dataset)} if dataset else {}),
    })
    prefix = sandboxes.isolation_prefix(sandbox, sandboxes.hidden_folders(forbidden, sandbox))
    worker = [sys.executable, "-m", "course_utils.grading.worker", str(sandbox), str(notebook), *forbidden]
    user = sandboxes.unprivileged_user()       # without namespaces, as root: a user of its own
    cgroups: list[Path] = []
    timed_out = threading.Event()
    running: list = []              # the sandbox's process, then the judge's

    def kill_all():
        timed_out.set()
        for proc in running:
            proc.kill() if isinstance(proc, RunningJudge) else _kill_group(proc)

    report = None
    judge_log = scratch / f"judge-{sandbox.name}.txt"
    private = {"opener": lambda path, flags: os.open(path, flags, 0o600)}   # the grader's alone
    try:
        cgroups = sandboxes.submission_cgroups(f"course-grade-{os.getpid()}-{sandbox.name}",
                                               int(memory_gb * 2**30), cpus=threads)
        if user is None:     # bubblewrap's own user; the launcher joins the cgroups before it starts
            command = sandboxes.limited(prefix + worker, int(memory_gb * 2**30), cgroups)
        else:                # `unshare -n` needs root: it runs first, then the launcher drops to `user`
            for path in [sandbox, *sandbox.rglob("*")]:
                os.chown(path, user, user)
            command = prefix + sandboxes.limited(worker, int(memory_gb * 2**30), cgroups, user)
        with open(scratch / f"stderr-{sandbox.name}.txt", "wb", **private) as stderr, \
                open(judge_log, "wb", **private) as log:
            student = sandboxes.start(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=stderr, cwd=sandbox, env=env, start_new_session=True)
            running.append(student)
            timer = threading.Timer(timeout, kill_all)
            judge = None
            try:
                tests = grader()
                timer.start()
                judge = judges.start(student.stdin.fileno(), student.stdout.fileno(), log.fileno(),
                                     tests.tests, tests.points, int(memory_gb * 2**30), threads)
                running.append(judge)
                sandboxes.track(judge)
                student.stdin.close()          # the judge holds the only ends now: when either side
                student.stdout.close()         # ends, the other reads end-of-file and cannot hang
                report = judge.report(MAX_REPORT_BYTES)
                timer.cancel()                 # what follows is cleanup, not the submission's time
                try:
                    student.wait(timeout=10)   # it leaves when the judge says goodbye
                except subprocess.TimeoutExpired:
                    pass
            finally:
                timer.cancel()
                if judge is not None:
                    judge.close()
                    sandboxes.untrack(judge)
                if student.poll() is None:
                    _kill_group(student)
                    student.wait()
                sandboxes.untrack(student)
    finally:
        sandboxes.kill_cgroups(cgroups)
        if user is not None:
            sandboxes.kill_user_processes(user)
        shutil.rmtree(sandbox, ignore_errors=True)
    if timed_out.is_set() and (report is None or report.get("broken")):
        return "timeout", None, f"stopped after the time limit of {timeout:g} s (an endless loop?)", ""
    if report is None:       # the log may quote hidden tests: for the instructor (results.json), not the feedback
        return ("error", None, "the judge gave no report (a bug in the tests or the grader: its log is in "
                "results.json)", judge_log.read_text(errors="replace")[-3000:])
    if report.get("broken"):
        tail = (scratch / f"stderr-{sandbox.name}.txt").read_text(errors="replace")[-800:]
        why = report["broken"]
        if student.returncode and student.returncode < 0:
            why += f"; it was killed by signal {-student.returncode}"
            why += " (probably the memory limit)" if student.returncode == -signal.SIGKILL else ""
        if "MemoryError" in tail or "Cannot allocate memory" in tail:
            why += f"; it ran out of memory (limit {memory_gb:g} GiB)"
        return "error", report, why + (f"\n{tail}" if tail.strip() else ""), ""
    return "graded", report, "", ""


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


def _flags(report: dict, source: str) -> list[str]:
    """What asks for a person's look: attempts the sandbox refused, tools of tampering. None of
    it changed the score, which the judge decided outside the submission's process."""
    flags = []
    if report["blocked"]:
        flags.append("attempted something the sandbox refused: " + "; ".join(report["blocked"][:3]))
    suspicious = suspicious_names(source)
    if suspicious:
        flags.append("uses names associated with tampering: " + ", ".join(suspicious[:8]))
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
          autograders: dict[str, Autograder] | None = None, hide=(), echo=print) -> list[GradeResult]:
    """Grade each submission in its own sandbox, `jobs` at a time (default: one per core);
    gradebook.csv, feedback/<student>.md and results.json are rewritten, atomically, as each
    submission finishes. Rerunning the same command keeps every result whose submission,
    solutions and settings are unchanged (an interrupted batch resumes); `regrade` redoes all.
    `autograders` (name -> Autograder) grades with assignments built already, instead of building
    them from `solutions` (Gradescope); `hide` adds folders the sandbox must not see."""
    paths = _expand(submissions)
    if not paths:
        raise GradingError("No submissions given: pass notebook files or folders of them.")
    if jobs is not None and jobs < 1:
        raise GradingError(f"--jobs {jobs}: give 1 or more submissions to grade at once.")
    output = Path(output_dir).resolve()
    output.mkdir(parents=True, exist_ok=True)   # now, so that every sandbox's view hides it
    graders: dict[str, Autograder] = dict(autograders or {})
    by_name: dict[str, Path] = {}      # assignment name -> its solution notebook (or built autograder's file)
    if autograders is None:
        for solution in solution_notebooks(solutions):
            by_name[assignment_name(json.loads(solution.read_text(encoding="utf-8")), solution)] = solution
        solutions_digest = hashlib.sha256(b"".join(p.read_bytes() for p in by_name.values())).hexdigest()
    else:
        by_name = {name: grader.solution for name, grader in graders.items()}
        solutions_digest = hashlib.sha256(json.dumps(
            {name: [g.tests, g.points] for name, g in sorted(graders.items())}, sort_keys=True).encode()).hexdigest()
    settings = (timeout, memory_gb, assignment)
    warning = sandboxes.isolation_warning()
    if warning:
        echo(warning)
    forbidden = sorted({str(p.resolve().parent) for p in paths} | {str(output), str(Path(solutions).resolve())}
                       | {str(Path(h).resolve()) for h in hide})
    if sandboxes.unprivileged_user() is not None:   # only the file system's permissions hide them now
        output.chmod(0o700)
        readable = [f for f in forbidden if Path(f).is_dir() and Path(f).stat().st_mode & 0o005]
        if readable:
            echo("WARNING: without bubblewrap, every user can read " + ", ".join(readable) + " (the "
                 "submissions' own code included, past the audit hooks). Fix: chmod o-rwx on them, or "
                 "install bubblewrap.")
    saved = {} if regrade else _load_saved(output / "results.json")
    students = _student_names(paths)
    done: dict[str, GradeResult] = {}
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

    workers = max(1, jobs or os.cpu_count() or 1)
    threads = max(1, (os.cpu_count() or 1) // workers)   # PyTorch threads per sandbox and judge

    def one(student: str, path: Path, scratch: Path, judges: JudgeServer) -> None:
        raw = path.read_bytes() if path.is_file() else b""
        fingerprint = _fingerprint(raw, solutions_digest, settings)
        old = saved.get(student)
        if old is not None and old.fingerprint == fingerprint:
            return finish(old, kept=True)
        result = GradeResult(student=student, submission=path, assignment=None, status="error",
                             fingerprint=fingerprint)
        try:
            _grade_one(result, path, assignment, by_name, graders, build_lock, timeout, memory_gb,
                       forbidden, scratch, judges, threads)
        except (GradingError, sandboxes.Stopping):
            raise
        except Exception as err:  # noqa: BLE001 - one submission never stops the batch
            result.status, result.notes = "error", [f"the grader failed on this submission: {err}"]
        finish(result, kept=False)

    with tempfile.TemporaryDirectory(prefix="course-grade-") as scratch_dir:
        scratch = Path(scratch_dir)
        (scratch / "sandboxes").mkdir()
        for folder in (scratch, scratch / "sandboxes"):   # a sandbox's user may pass, not list
            folder.chmod(0o711)
        forbidden.append(str(scratch))
        judges = JudgeServer(scratch)
        threading.Thread(target=judges.warm_up, daemon=True).start()   # its imports overlap the first sandboxes'
        sandboxes.resume_starting()
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers)
        try:
            for future in [pool.submit(one, student, path, scratch, judges)
                           for student, path in zip(students, paths)]:
                future.result()
        except BaseException:  # Ctrl-C, or a GradingError: stop at once, keep what finished
            stopping.set()
            pool.shutdown(wait=False, cancel_futures=True)
            sandboxes.stop_running()
            raise
        finally:
            pool.shutdown(wait=True)
            judges.close()
    return [done[s] for s in students]


def _grade_one(result, path, assignment, by_name, graders, build_lock, timeout, memory_gb, forbidden,
               scratch, judges, threads):
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
        candidates = [n for n, s in by_name.items() if match and (s.name.startswith(match.group(0))
                                                                  or n.startswith(match.group(0)))]
        name = candidates[0] if len(candidates) == 1 else None
    if name not in by_name:
        result.status = "invalid"
        result.notes = [f"cannot tell which assignment this is (found {name!r}); known: "
                        f"{', '.join(sorted(by_name))}. Fix: course grade --assignment NAME ..."]
        return
    result.assignment = name

    def grader() -> Autograder:
        """Built once per assignment, by whichever thread needs it first; meanwhile the sandboxes
        already started run the students' cells (they need no tests)."""
        with build_lock:
            if name not in graders:
                graders[name] = build_autograder(by_name[name], workdir=scratch)
        return graders[name]

    started = time.perf_counter()
    status, report, why, judge_log = _run_submission(raw, grader, timeout, memory_gb, forbidden, scratch,
                                                     judges, threads)
    result.seconds = time.perf_counter() - started
    if judge_log:
        result.details["judge_log"] = judge_log
    built = grader()
    result.manual = list(built.manual)
    result.possible = sum(built.points.values())
    result.scores = {q: 0.0 for q in sorted(built.tests)}
    result.status = status
    if why:
        result.notes.append(why)
    if report is None:
        return
    result.details = report
    for question, outcome in report["questions"].items():
        if question in result.scores:
            result.scores[question] = float(outcome["score"])
    from .worker import code_cells  # (not at the top: `python -m ...worker` must import it first)
    result.flags = _flags(report, "\n".join(source for _, source in code_cells(nb)))
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
