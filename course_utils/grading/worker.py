"""Runs ONE submission inside its sandbox (sandbox.py), started by batch.py, never by hand.

This process only computes; it decides nothing. In order:
1. Import the libraries, then install audit hooks (which Python cannot remove) that refuse
   writes outside this folder, reads of the instructor's files, subprocesses, sockets, signals to
   other processes and ctypes: a second layer under the OS sandbox.
2. Run the submission's code cells in an IPython shell, as Jupyter does (an error in one cell
   is recorded; the next cells still run).
3. Serve the judge (judge.py), which runs the tests in its own process outside: it asks for the
   student's names, calls the student's functions with the tests' inputs, and gets back plain
   data (wire.py). The tests themselves, their expected values and the score never come here.
"""

from __future__ import annotations

import base64
import builtins
import os
import pickle
import sys
import traceback

from . import wire

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


def code_cells(nb: dict):
    """(number, source) of each code cell, as the grader runs it: the notebook's own checker lines
    (`grader.check`, `otter.Notebook`) become `pass` at the same indentation, so a block that held
    one still runs; the judge runs the tests instead."""
    for number, cell in enumerate(nb.get("cells", []), start=1):
        if cell.get("cell_type") != "code":
            continue
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else str(source)
        lines = []
        for line in source.splitlines():
            code = line.lstrip()
            indent = line[:len(line) - len(code)]
            if "grader.check" in code or "otter.Notebook(" in code or code.strip() == "import otter":
                line = indent + "pass  # (the notebook's checker: the judge runs the tests)"
            lines.append(line)
        yield number, "\n".join(lines)


def ipython_shell(env: dict):
    """An IPython shell on `env`, as Jupyter's kernel runs cells: `display()`, magics and the
    value of a cell's last line work as in the notebook (no history file is written)."""
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    config = Config()
    config.HistoryManager.enabled = False
    return InteractiveShell.instance(config=config, user_ns=env)


def run_cells(nb: dict, shell) -> list[str]:
    """Run every code cell in `shell`; an error ends its cell only, and is recorded."""
    errors = []
    for number, source in code_cells(nb):
        result = shell.run_cell(source, store_history=False)
        err = result.error_before_exec or result.error_in_exec
        if err is None:
            continue
        frames = traceback.extract_tb(err.__traceback__) if err.__traceback__ else []
        cell_lines = [f.lineno for f in frames if f.filename.startswith(("<ipython-input", "<cell"))]
        line = getattr(err, "lineno", None) if isinstance(err, SyntaxError) else (cell_lines or [None])[-1]
        where = f" (line {line})" if line else ""
        errors.append(f"cell {number}{where}: {type(err).__name__}: {str(err)[:300]}")
    return errors


class Server:
    """Answers the judge's requests about the student's namespace `env`."""

    def __init__(self, env: dict, cell_errors: list[str], blocked: list[str], requests, replies):
        self.env, self.cell_errors, self.blocked = env, cell_errors, blocked
        self.requests, self.replies = requests, replies
        self.objects: dict[int, object] = {}     # handle -> an object that is not plain data
        self.handles: dict[int, int] = {}        # id(object) -> its handle

    def keep(self, obj) -> int:
        if id(obj) not in self.handles:
            self.handles[id(obj)] = len(self.objects) + 1
            self.objects[len(self.objects) + 1] = obj
        return self.handles[id(obj)]

    def plain(self, value):
        return wire.to_plain(value, self.keep)

    def unpickle(self, text: str, resolved: set | None = None):
        """The judge's pickle; its handles become the objects they stand for (their ids are
        added to `resolved`)."""
        import io

        server = self

        class Unpickler(pickle.Unpickler):
            def persistent_load(self, pid):
                if pid[0] == "callback":
                    return Callback(server, pid[1])
                obj = server.objects[pid[1]]
                if resolved is not None:
                    resolved.add(id(obj))
                return obj

        return Unpickler(io.BytesIO(base64.b64decode(text))).load()

    def answer(self, request: dict) -> dict:
        op = request.get("op")
        if op == "names":
            return {"value": self.plain({name: self.env[name] for name in request["names"] if name in self.env})}
        if op == "status":
            return {"value": self.plain({"cell_errors": self.cell_errors, "blocked": self.blocked[:20]})}
        target = self.objects.get(request.get("target"))
        if op == "getattr":
            return {"value": self.plain(getattr(target, request["name"]))}
        if op == "setattr":
            setattr(target, request["name"], self.unpickle(request["args"]))
            return {"value": None}
        if op == "getitem":
            return {"value": self.plain(target[self.unpickle(request["args"])])}
        if op == "len":
            return {"value": len(target)}
        if op == "list":
            return {"value": self.plain(list(target))}
        if op in ("call", "run"):
            return self.call(request, target)
        raise ValueError(f"unknown request {op!r}")

    def call(self, request: dict, target) -> dict:
        """Call `target` (or run the judge's probe) with the judge's random state, then send back
        the result, the random state after, and the new state of every tensor, module and
        generator among the arguments, as if the call had run in the judge's process."""
        resolved: set[int] = set()
        args, kwargs, states = self.unpickle(request["args"], resolved)
        if request["op"] == "run":                 # the judge's probe: instructor code, run here
            namespace = dict(self.env)
            exec(compile(request["source"], "<probe>", "exec"), namespace)
            target = namespace[request["name"]]
        wire.set_random_states(states)
        reply = {}
        parts = list(wire.mutable_parts((args, kwargs), resolved))
        before = [_members(part) for part in parts]
        try:
            value = target(*args, **kwargs)
            known = {id(obj): k for k, obj in enumerate(wire.known_objects(parts))}
            reply["value"] = wire.to_plain(value, self.keep, known)
        except Exception as err:  # noqa: BLE001 - the student's error is the test's business
            reply["error"] = {"type": type(err).__name__, "message": str(err)[:2000],
                              "where": "".join(traceback.format_exception(err)[-3:])[-1500:]}
        reply["rng"] = self.plain(wire.random_states())
        reply["mutated"] = [self.plain(state_of(part, ids)) for part, ids in zip(parts, before)]
        return reply

    def serve(self) -> None:
        """Answer the judge until it says goodbye (or goes away)."""
        while True:
            try:
                request = wire.receive(self.requests)
            except EOFError:
                return
            if request.get("op") == "bye":
                return
            self.reply(request)

    def reply(self, request: dict) -> None:
        try:
            reply = self.answer(request)
        except Exception as err:  # noqa: BLE001
            reply = {"error": {"type": type(err).__name__, "message": str(err)[:2000], "where": ""}}
        try:
            wire.send(self.replies, reply)
        except (TypeError, ValueError, RecursionError) as err:
            wire.send(self.replies, {"error": {"type": "TypeError", "where": "",
                                               "message": f"the answer cannot be sent as plain data: {err}"}})


class Callback:
    """A function of the test's (a `fit` handed to the student's cross-validation, say): calling
    it asks the judge to run it there, on plain-data copies of the arguments, and serves the
    judge's own requests meanwhile (the function may call the student's code in turn)."""

    def __init__(self, server: Server, number: int):
        self.server, self.number = server, number

    def __call__(self, *args, **kwargs):
        server = self.server
        wire.send(server.replies, {"callback": self.number, "args": server.plain((args, kwargs)),
                                   "rng": server.plain(wire.random_states())})
        while True:
            message = wire.receive(server.requests)
            if message.get("op") == "bye":
                os._exit(0)
            if message.get("op") in ("return", "raise"):
                value, states = server.unpickle(message["args"])
                wire.set_random_states(states)
                if message["op"] == "raise":
                    kind = getattr(builtins, str(message.get("type")), None)
                    kind = kind if isinstance(kind, type) and issubclass(kind, Exception) else RuntimeError
                    raise kind(f"(in the test's function) {message.get('message', '')}")
                return value
            server.reply(message)


def _members(part) -> dict:
    """The ids of a dict's values (or a list's items), to tell after a call which are the same objects."""
    if isinstance(part, dict):
        return {key: id(value) for key, value in part.items()}
    return dict(enumerate(map(id, part))) if isinstance(part, list) else {}


def state_of(part, ids_before: dict):
    """What the judge needs to update its copy of an argument the call may have changed: for a
    dict or a list, its new content and which members are the same objects as before (a tensor
    updated in place stays the same tensor in the judge too)."""
    import torch

    if isinstance(part, torch.nn.Module):
        return {"state": dict(part.state_dict(keep_vars=False)), "training": part.training,
                "grads": {name: p.grad for name, p in part.named_parameters()},
                "requires_grad": {name: p.requires_grad for name, p in part.named_parameters()}}
    if isinstance(part, torch.Generator):
        return {"generator": part.get_state()}
    if isinstance(part, (dict, list)):
        now = _members(part)
        return {"content": part, "same": [key for key, ident in now.items() if ids_before.get(key) == ident]}
    return {"tensor": part, "grad": part.grad}


def main() -> None:
    sandbox, submission, forbidden = sys.argv[1], sys.argv[2], sys.argv[3:]
    requests = os.fdopen(os.dup(0), "rb")         # the judge's requests: the pipe batch.py gave it
    replies = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # input() and sys.stdin.read() get end-of-file
    log = open(os.path.join(sandbox, "output.log"), "w")  # what the student's code prints
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdin, sys.stdout, sys.stderr = open(os.devnull), log, log

    import json

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401
    import numpy  # noqa: F401
    import torch  # noqa: F401
    import torchvision.transforms.v2  # noqa: F401  (loads its C++ operators with ctypes, refused later)

    import course_utils  # noqa: F401  (imported before the hooks)

    with open(submission, encoding="utf-8") as f:
        nb = json.load(f)
    env = {"__name__": "__main__"}
    shell = ipython_shell(env)
    blocked = _install_audit_hook(sandbox, forbidden)
    cell_errors = run_cells(nb, shell)
    Server(env, cell_errors, blocked, requests, replies).serve()
    os._exit(0)


if __name__ == "__main__":
    main()
