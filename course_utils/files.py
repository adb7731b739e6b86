"""Writing files so that an interruption never leaves a half-written one behind.

Every file the course writes (checkpoints, HTML, gradebooks, dataset copies) goes through here.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb", **open_kwargs):
    """Write to a temporary file beside `path`; rename it over `path` only if the block succeeds.

        with atomic_write("grades/gradebook.csv", "w") as f:
            f.write(text)

    The file gets the permissions an ordinary `open()` would give it (those of the file it
    replaces, else 0o666 less the umask), not the owner-only ones of a temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _permissions_for(path))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _permissions_for(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _umask() -> int:
    """The process's umask. Linux shows it in /proc; elsewhere reading it means setting it, which
    another thread could notice for an instant."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o077)
    os.umask(umask)
    return umask


def write_text_atomic(path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)
    return Path(path)


def save_atomic(obj, path) -> Path:
    """torch.save through a temporary file and a rename: never a half-written checkpoint."""
    import torch

    with atomic_write(path) as f:
        torch.save(obj, f)
    return Path(path)
