"""Grade ONE submission inside a sandbox process. Started by course_utils.grading, never by hand.

Order matters, because student code runs in this process:
1. Before any student code: import the libraries, remember the real comparison functions and
   otter's test runner, take a private channel for the result, and install audit hooks (which
   Python cannot remove) that refuse writes outside this folder, reads of the instructor's files,
   subprocesses, sockets and ctypes.
2. Run the submission's code cells (an error in one cell is recorded; the next cells still run).
3. Say READY; only then does the grader send the hidden tests, on a pipe moved to an unpredictable
   file descriptor (stdin itself is /dev/null). They were never on disk here.
4. Put back any comparison function the student replaced, flag it, and run the tests with otter's
   own test-file runner.
5. Write the result on the private channel and leave with os._exit (no atexit hook can add a line).
"""

from __future__ import annotations

import builtins
import inspect
import json
import math
import os
import sys
import traceback

# What an attack on an in-process grader needs. Using a comparison function is fine; assigning
# to one, or reaching for these tools, gets the submission flagged for review.
SUSPICIOUS_NAMES = (
    "otter", "grader.", "ExceptionTestFile", "sys.modules", "__builtins__", "builtins", "inspect",
    "sys._getframe", "gc", "atexit", "os.dup", "os.dup2", "os.write", "os.read", "os.fstat",
    "fcntl", "/proc", "ctypes", "import_module", "threading", "signal", "__code__", "__globals__",
)
SUSPICIOUS_PATTERNS = (
    r"\b(torch|np|numpy|math|testing|Tensor)(\.\w+)*\.\w+\s*=(?!=)",   # torch.equal = ...
    r"\bsetattr\(\s*(torch|np|numpy|math|builtins)",
    r"\bdel\s+(torch|np|numpy|math)\.",
)


def _guarded_functions():
    """(owner, attribute) pairs that tests rely on and a student might replace."""
    import numpy
    import numpy.testing
    import torch
    import torch.testing
    from otter.test_files import abstract_test, exception_test

    pairs = [(torch, n) for n in ("equal", "allclose", "isclose", "all", "any", "eq", "abs", "tensor")]
    pairs += [(torch.Tensor, n) for n in ("__eq__", "all", "any", "item", "tolist", "__bool__")]
    pairs += [(torch.testing, "assert_close")]
    pairs += [(numpy, n) for n in ("allclose", "isclose", "array_equal", "all", "any", "asarray")]
    pairs += [(numpy.testing, n) for n in ("assert_allclose", "assert_array_equal", "assert_equal")]
    pairs += [(math, "isclose"), (json, "dumps")]
    pairs += [(builtins, n) for n in dir(builtins) if not n.startswith("_")]
    pairs += [(exception_test.ExceptionTestFile, n) for n in ("run", "from_string", "from_file")]
    pairs += [(exception_test, "test_case")]
    pairs += [(abstract_test.TestFile, n) for n in ("grade", "score", "possible", "summary",
                                                    "all_passed")]
    # getattr_static: a classmethod looked up normally is a new bound object every time
    return [(owner, name, inspect.getattr_static(owner, name)) for owner, name in pairs
            if hasattr(owner, name)]


def _restore(guarded) -> list[str]:
    """Put back every replaced function; return the names that had been replaced."""
    replaced = []
    for owner, name, original in guarded:
        try:
            current = inspect.getattr_static(owner, name)
        except Exception:  # noqa: BLE001 - deleted, or a hostile __getattr__
            current = None
        if current is not original:
            replaced.append(f"{getattr(owner, '__name__', owner)}.{name}")
            try:
                setattr(owner, name, original)
            except Exception:  # noqa: BLE001
                pass
    return replaced


def _install_audit_hook(sandbox: str, forbidden: list[str]):
    sandbox = os.path.realpath(sandbox)
    forbidden = [os.path.realpath(p) for p in forbidden]
    blocked: list[str] = []
    allowed_write = (sandbox, "/dev/null")

    def inside(path, roots):
        try:
            real = os.path.realpath(os.fsdecode(path))
        except Exception:  # noqa: BLE001
            return False
        return any(real == r or real.startswith(r.rstrip("/") + "/") for r in roots)

    def refuse(what):
        blocked.append(what)
        raise PermissionError(f"not allowed while grading: {what}")

    def hook(event, args):
        if event == "open":
            path, mode = args[0], args[1]
            if isinstance(path, int):
                return
            writing = isinstance(mode, str) and any(c in mode for c in "wax+")
            flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
            writing = writing or bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC))
            if writing and not inside(path, allowed_write):
                refuse(f"writing {os.fsdecode(path)} (outside the submission's folder)")
            if inside(path, forbidden) and not inside(path, [sandbox]):
                refuse(f"reading {os.fsdecode(path)} (the instructor's files)")
        elif event in ("os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown",
                       "os.truncate", "os.link", "os.symlink", "shutil.rmtree", "shutil.copyfile",
                       "shutil.move", "os.utime"):
            for path in args:
                if isinstance(path, (str, bytes, os.PathLike)) and not inside(path, allowed_write):
                    refuse(f"{event} on {os.fsdecode(path)} (outside the submission's folder)")
        elif event in ("os.listdir", "os.scandir", "glob.glob"):
            path = args[0] if args else "."
            if (isinstance(path, (str, bytes, os.PathLike)) and inside(path or ".", forbidden)
                    and not inside(path or ".", [sandbox])):
                refuse(f"listing {os.fsdecode(path)} (the instructor's files)")
        elif event in ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
                       "os.fork", "os.forkpty", "pty.spawn"):
            refuse(f"starting a process ({event})")
        elif event in ("socket.connect", "socket.bind", "socket.sendto", "socket.getaddrinfo"):
            refuse(f"network access ({event})")
        elif event in ("ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "ctypes.addressof"):
            refuse(f"ctypes ({event})")
        elif event == "os.kill" and args[0] not in (0, os.getpid()):
            refuse(f"sending signal {args[1]} to process {args[0]}")
        elif event == "os.killpg" and args[0] != os.getpgid(0):
            refuse(f"sending signal {args[1]} to process group {args[0]}")
        elif event == "sys.addaudithook":
            refuse("adding an audit hook")

    sys.addaudithook(hook)
    return blocked


def _code_cells(nb: dict):
    for number, cell in enumerate(nb.get("cells", []), start=1):
        if cell.get("cell_type") != "code":
            continue
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else str(source)
        # otter's own cells: the student-side checker is not part of the answer
        lines = ["pass  # (checker line skipped by the grader)"
                 if ("grader.check" in line or "otter.Notebook(" in line or line.strip() == "import otter")
                 else line for line in source.splitlines()]
        lines = ["pass  # (shell or magic line skipped)" if line.lstrip().startswith(("%", "!")) else line
                 for line in lines]
        yield number, "\n".join(lines)


def _code_without_comments(source: str) -> str:
    import io
    import tokenize

    try:
        tokens = [t for t in tokenize.generate_tokens(io.StringIO(source).readline)
                  if t.type != tokenize.COMMENT]
        return tokenize.untokenize(tokens)
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return source


def suspicious_names(source: str) -> list[str]:
    """What the code (not its comments) uses of SUSPICIOUS_NAMES and SUSPICIOUS_PATTERNS."""
    import re

    code = _code_without_comments(source)
    found = set()
    for name in SUSPICIOUS_NAMES:
        pattern = re.escape(name)
        if name[0].isalnum() or name[0] == "_":
            pattern = r"(?<![\w.])" + pattern
        if name[-1].isalnum() or name[-1] == "_":
            pattern += r"(?!\w)"
        if re.search(pattern, code):
            found.add(name)
    for pattern in SUSPICIOUS_PATTERNS:
        for match in re.finditer(pattern, code):
            found.add(match.group(0).strip().rstrip("=").strip())
    return sorted(found)


def _private_fd(fd: int) -> int:
    """Move `fd` to an unpredictable high number, so student code cannot simply write to it."""
    import secrets

    while True:
        target = 200 + secrets.randbelow(800)
        try:
            os.fstat(target)
        except OSError:
            os.dup2(fd, target)
            return target


def main() -> None:
    sandbox, submission, forbidden = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    tests_in = os.fdopen(_private_fd(0), "r")
    result_out = os.fdopen(_private_fd(1), "w")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # input() and sys.stdin.read() get end-of-file, never the tests
    log = open(os.path.join(sandbox, "output.log"), "w")  # what the student's code prints
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdin, sys.stdout, sys.stderr = open(os.devnull), log, log

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401
    import numpy  # noqa: F401
    import torch  # noqa: F401
    import torchvision.transforms.v2  # noqa: F401  (loads its C++ operators with ctypes, refused later)
    from otter.test_files.exception_test import ExceptionTestFile

    import course_utils  # noqa: F401  (imported before the hooks)

    guarded = _guarded_functions()
    real_dumps, real_loads, real_exit = json.dumps, json.loads, os._exit
    with open(submission, encoding="utf-8") as f:
        nb = json.load(f)
    source_text = "\n".join(src for _, src in _code_cells(nb))
    blocked = _install_audit_hook(sandbox, forbidden)

    env = {"__name__": "__main__", "__builtins__": builtins}
    cell_errors = []
    for number, source in _code_cells(nb):
        try:
            exec(compile(source, f"<cell {number}>", "exec"), env)
        except BaseException as err:  # noqa: BLE001 - SystemExit and KeyboardInterrupt too
            last = traceback.extract_tb(err.__traceback__)[-1:] if err.__traceback__ else []
            where = f" (line {last[0].lineno})" if last and last[0].filename.startswith("<cell") else ""
            cell_errors.append(f"cell {number}{where}: {type(err).__name__}: {str(err)[:300]}")

    replaced = _restore(guarded)
    result_out.write("READY\n")
    result_out.flush()
    payload = real_loads(tests_in.read())  # the hidden tests exist in this process only from now on
    results = {}
    for name, test_source in payload["tests"].items():
        try:
            test_file = ExceptionTestFile.from_string(test_source, path=f"{name}.py")
            test_file.run(env)
            replaced += [r for r in _restore(guarded) if r not in replaced]
            results[name] = {
                "score": float(test_file.score), "possible": float(test_file.possible),
                "tests": [{"name": r.test_case.name, "hidden": bool(r.test_case.hidden),
                           "passed": bool(r.passed),
                           "message": "" if r.passed else str(r.message)[-600:]}
                          for r in test_file.test_case_results],
            }
        except BaseException as err:  # noqa: BLE001
            replaced += [r for r in _restore(guarded) if r not in replaced]
            results[name] = {"score": 0.0, "possible": float(payload["points"].get(name, 0)),
                             "tests": [], "error": f"{type(err).__name__}: {str(err)[:300]}"}
    suspicious = suspicious_names(source_text)
    report = {"token": payload["token"], "questions": results, "cell_errors": cell_errors,
              "replaced": replaced, "blocked": blocked[:20], "suspicious": suspicious}
    result_out.write(real_dumps(report) + "\n")
    result_out.flush()
    real_exit(0)


if __name__ == "__main__":
    main()
