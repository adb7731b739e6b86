"""The judge: runs an assignment's tests OUTSIDE the student's process and decides the score.
Started by batch.py for each submission, next to its sandbox (worker.py), as `judge.main()`
(the judge server, judges.py, forks it with its libraries imported).

The tests are otter's exception-based test files, public and hidden, exactly as the solution
notebook defines them. Each test function's arguments are the student's names: here they are
stand-ins (`Remote`). Calling one sends the arguments into the sandbox, the student's function
runs there, and what comes back is plain data (wire.py), rebuilt here as real numbers, tensors and
arrays, or another stand-in for an object that is not plain data (a model, a generator of
batches). So every comparison a test makes runs in this process, with this process's untouched
PyTorch and NumPy, on values the submission could only choose, never disguise: forged reports,
patched comparison functions, objects that equal anything and trace hooks earn nothing.

What a test may do with the student's objects (say it to whoever writes tests):
- call them, read and set their attributes, index them, take their len() or iterate them;
- pass them tensors, arrays, numbers, strings, containers, torch modules and generators, and
  functions of the test's own (the sandbox calls them back here); a call runs with this
  process's random state and hands it back after, and the new values of every tensor, module
  (parameters, buffers, gradients, requires_grad, train/eval mode), generator, dict and list it
  was given are copied back, so seeding, "does not change its input" and in-place updates all
  behave as in the student's notebook, and a result that *is* an argument is the test's object;
- NOT share memory with them: a model the test builds and an optimizer the student's class makes
  live in different processes, and a result's autograd graph stays in the sandbox. Put such code
  in a probe: `in_submission(function, *args)` from `course_utils.checks` runs the test's own
  function in the sandbox and returns its plain-data result (and runs it right there in the
  student's notebook).
"""

from __future__ import annotations

import base64
import builtins
import inspect
import io
import json
import linecache
import os
import pickle
import sys
import textwrap
import types

from .. import checks
from ..checks import in_submission  # noqa: F401  (where tests written before course_utils.checks import it)
from . import wire

# the student's errors that a test may expect by name (pytest.raises(ValueError), ...)
KNOWN_ERRORS = {name: getattr(builtins, name) for name in dir(builtins)
                if isinstance(getattr(builtins, name), type) and issubclass(getattr(builtins, name), Exception)}


class SubmissionError(Exception):
    """The student's code raised an error the judge has no class for, or the sandbox broke."""


class BrokenSandbox(SubmissionError):
    """The submission's process ended or sent something that is not plain data."""


class Link:
    """Requests to the sandbox and its replies (wire.py)."""

    def __init__(self, requests, replies):
        self.requests, self.replies, self.broken = requests, replies, None
        self.callbacks: list = []     # the test's functions the sandbox was given, by number

    def ask(self, op: str, **fields):
        """Send a request; run the callbacks the sandbox asks for until its reply comes."""
        if self.broken:
            raise BrokenSandbox(self.broken)
        try:
            wire.send(self.requests, {"op": op, **fields})
            while True:
                reply = wire.receive(self.replies)
                if "callback" not in reply:
                    return reply
                wire.send(self.requests, self.run_callback(reply))
        except (OSError, EOFError, ValueError, RecursionError) as err:
            self.broken = f"the submission's process stopped answering ({type(err).__name__}: {err})"
            raise BrokenSandbox(self.broken) from None

    def run_callback(self, message: dict) -> dict:
        """The sandbox called one of the test's functions: run it here, with the sandbox's
        random state, on plain-data copies of its arguments."""
        try:
            function = self.callbacks[int(message["callback"])]
            args, kwargs = wire.from_plain(message["args"], self.remote)
            wire.set_random_states(wire.from_plain(message["rng"], self.remote))
        except Exception as err:  # noqa: BLE001 - a malformed request: the call fails there
            return {"op": "raise", "type": "RuntimeError", "message": f"bad callback request: {err}",
                    "args": self.pickle((None, wire.random_states()))}
        try:
            value = function(*args, **kwargs)
        except Exception as err:  # noqa: BLE001
            return {"op": "raise", "type": type(err).__name__, "message": str(err)[:2000],
                    "args": self.pickle((None, wire.random_states()))}
        return {"op": "return", "args": self.pickle((value, wire.random_states()))}

    def value(self, reply: dict, known=()):
        try:
            value = wire.from_plain(reply.get("value"), self.remote, known=known)
        except (wire.WireError, TypeError, ValueError, RecursionError) as err:
            raise SubmissionError(f"the submission sent back something that is not plain data: {err}") from None
        if "error" in reply:
            raise _student_error(reply["error"])
        return value

    def remote(self, handle: int, lineage: list[str]) -> "Remote":
        return Remote(self, handle, lineage)

    def pickle(self, value) -> str:
        """`value` for the sandbox: stand-ins go as their handles, and the test's own functions
        (which the sandbox could not import) as callbacks."""
        buffer = io.BytesIO()
        callbacks = self.callbacks

        class Pickler(pickle.Pickler):
            def persistent_id(self, obj):
                if type(obj) is Remote:
                    return ("remote", object.__getattribute__(obj, "_handle"))
                if isinstance(obj, (types.FunctionType, types.MethodType)) and not _importable(obj):
                    callbacks.append(obj)
                    return ("callback", len(callbacks) - 1)
                return None

        try:
            Pickler(buffer).dump(value)
        except (pickle.PicklingError, TypeError, AttributeError) as err:
            raise TypeError(f"the test passed something that cannot go to the sandbox: {err}. "
                            "Build it inside a probe (in_submission) instead.") from None
        return base64.b64encode(buffer.getvalue()).decode()

    def call(self, op: str, args: tuple, kwargs: dict, **fields):
        """A call into the sandbox as if it ran here: our random state goes with it and comes
        back, and the arguments' new state is copied into ours."""
        reply = self.ask(op, args=self.pickle((args, kwargs, wire.random_states())), **fields)
        try:
            wire.set_random_states(wire.from_plain(reply["rng"], self.remote))
            parts = list(wire.mutable_parts((args, kwargs)))
            for part, state in zip(parts, reply["mutated"], strict=True):
                _update(part, wire.from_plain(state, self.remote))
        except Exception as err:  # noqa: BLE001 - whatever the sandbox sent, it is the test's failure
            raise SubmissionError(f"the submission's reply could not be used: {type(err).__name__}: {err}") from None
        return self.value(reply, wire.known_objects(parts))


def _importable(function) -> bool:
    """Whether pickle can send `function` by name (torch.nn.functional.mse_loss: yes; a function
    or lambda defined inside a test: no)."""
    owner = sys.modules.get(getattr(function, "__module__", None) or "")
    target = owner
    for part in getattr(function, "__qualname__", "<>").split("."):
        target = getattr(target, part, None)
    return owner is not None and target is function


def _update(part, state) -> None:
    import torch

    with torch.no_grad():
        if isinstance(part, torch.nn.Module):
            part.load_state_dict(state["state"])
            part.train(bool(state["training"]))
            for name, parameter in part.named_parameters():
                parameter.grad = state["grads"].get(name)
                parameter.requires_grad_(bool(state["requires_grad"].get(name, parameter.requires_grad)))
        elif isinstance(part, torch.Generator):
            part.set_state(state["generator"])
        elif isinstance(part, (dict, list)):
            old = dict(part.items()) if isinstance(part, dict) else dict(enumerate(part))
            content = state["content"]
            same = set(state["same"])
            for key, value in (content.items() if isinstance(content, dict) else enumerate(content)):
                kept = old.get(key)
                if key in same and isinstance(kept, torch.Tensor) and isinstance(value, torch.Tensor) \
                        and kept.shape == value.shape and kept.dtype == value.dtype:
                    kept.copy_(value)              # updated in place there: in place here too
                    content[key] = kept
            if isinstance(part, dict):
                part.clear()
                part.update(content)
            else:
                part[:] = content
        else:
            new = state["tensor"]
            if new.shape == part.shape and new.dtype == part.dtype:
                part.copy_(new)
            else:
                part.data = new
            part.grad = state["grad"]


def _student_error(error) -> Exception:
    error = error if isinstance(error, dict) else {}
    name, message = str(error.get("type", "Error"))[:80], str(error.get("message", ""))[:2000]
    kind = KNOWN_ERRORS.get(name)
    if kind is None or not issubclass(kind, Exception) or kind in (SystemExit, KeyboardInterrupt):
        return SubmissionError(f"{name}: {message}")
    try:
        return kind(f"(in the submission) {message}")
    except Exception:  # noqa: BLE001 - e.g. UnicodeDecodeError wants five arguments
        return SubmissionError(f"{name}: {message}")


class Remote:
    """The judge's stand-in for an object of the submission that stayed in the sandbox.

    `isinstance(stand_in, nn.Conv2d)` answers for the object's nearest PyTorch class (the
    sandbox says which classes it is an instance of: that is the submission's word, so a check
    of which layers a model has is a claim; what the model computes is measured)."""

    __slots__ = ("_link", "_handle", "_type")

    def __init__(self, link: Link, handle: int, lineage: list[str]):
        object.__setattr__(self, "_link", link)
        object.__setattr__(self, "_handle", handle)
        object.__setattr__(self, "_type", lineage)

    @property
    def __class__(self):
        for name in object.__getattribute__(self, "_type"):
            known = wire.torch_class(name)
            if known is not None:
                return known
        return Remote

    def _ask(self, op, **fields):
        link = object.__getattribute__(self, "_link")
        return link.value(link.ask(op, target=object.__getattribute__(self, "_handle"), **fields))

    def __call__(self, *args, **kwargs):
        link = object.__getattribute__(self, "_link")
        return link.call("call", args, kwargs, target=object.__getattribute__(self, "_handle"))

    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return self._ask("getattr", name=name)

    def __setattr__(self, name, value):
        link = object.__getattribute__(self, "_link")
        self._ask("setattr", name=name, args=link.pickle(value))

    def __getitem__(self, key):
        return self._ask("getitem", args=object.__getattribute__(self, "_link").pickle(key))

    def __len__(self):
        size = self._ask("len")
        if type(size) is not int or size < 0:
            raise SubmissionError("len() of the submission's object is not a count")
        return size

    def __iter__(self):
        items = self._ask("list")
        if type(items) is not list:
            raise SubmissionError("iterating the submission's object gave no list")
        return iter(items)

    def __repr__(self):
        lineage = object.__getattribute__(self, "_type")
        return f"<{lineage[0].rsplit('.', 1)[-1] if lineage else 'object'} in the submission>"


def _run_in_sandbox(link: Link):
    """The judge's `in_submission`: the test's function goes to the sandbox as source code and
    runs there; its result comes back as plain data."""
    def run(function, args, kwargs):
        source = textwrap.dedent(inspect.getsource(function))
        return link.call("run", args, kwargs, source=source, name=function.__name__)
    return run


def load_tests(tests: dict[str, str]):
    """otter's test files, with their source known to linecache (for inspect.getsource)."""
    from otter.test_files.exception_test import ExceptionTestFile

    files = {}
    for name, source in sorted(tests.items()):
        path = f"<hidden tests {name}>"
        linecache.cache[path] = (len(source), None, source.splitlines(True), path)
        files[name] = ExceptionTestFile.from_string(source, path=path)
    return files


def judge(tests: dict[str, str], points: dict[str, float], link: Link) -> dict:
    checks._RUNNER, checks._STAND_IN = _run_in_sandbox(link), Remote
    files = load_tests(tests)
    wanted = sorted({p for f in files.values() for case in f.test_cases
                     for p in inspect.signature(case.body.test_func).parameters} - {"env"})
    try:
        names = link.value(link.ask("names", names=wanted))
        env = dict(names) if type(names) is dict else {}
    except SubmissionError:
        env = {}
    results = {}
    for name, test_file in files.items():
        try:
            test_file.run(env)
            results[name] = {
                "score": float(test_file.score), "possible": float(test_file.possible),
                "tests": [{"name": r.test_case.name, "hidden": bool(r.test_case.hidden),
                           "passed": bool(r.passed), "message": "" if r.passed else str(r.message)[-600:]}
                          for r in test_file.test_case_results]}
        except Exception as err:  # noqa: BLE001
            results[name] = {"score": 0.0, "possible": float(points.get(name, 0)), "tests": [],
                             "error": f"{type(err).__name__}: {str(err)[:300]}"}
    try:
        status = link.value(link.ask("status"))
        wire.send(link.requests, {"op": "bye"})
    except (SubmissionError, OSError):
        status = {}
    status = status if type(status) is dict else {}
    return {"questions": results, "broken": link.broken,
            "cell_errors": [str(e)[:400] for e in status.get("cell_errors", [])][:20]
            if type(status.get("cell_errors")) is list else [],
            "blocked": [str(b)[:300] for b in status.get("blocked", [])][:20]
            if type(status.get("blocked")) is list else []}
