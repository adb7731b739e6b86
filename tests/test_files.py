"""Files the course writes: atomic, and with the permissions an ordinary open() would give them."""
import os
import stat

import pytest

from conftest import small_mlp
from course_utils import Checkpoint, fit
from course_utils.files import atomic_write, save_atomic, write_text_atomic


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_new_files_get_the_umask_permissions_not_owner_only(tmp_path, umask_022, spirals):
    write_text_atomic(tmp_path / "page.html", "<p>hi</p>")
    save_atomic({"x": 1}, tmp_path / "state.pt")
    fit(small_mlp(), spirals, epochs=1, lr=0.1, progress=False,
        callbacks=[Checkpoint(tmp_path / "run.pt", monitor="train_loss")])
    for name in ("page.html", "state.pt", "run.pt", "run.best.pt"):
        assert mode(tmp_path / name) == 0o644, name


def test_a_replaced_file_keeps_its_permissions(tmp_path, umask_022):
    target = tmp_path / "grades.csv"
    target.write_text("old")
    os.chmod(target, 0o600)  # an instructor made the gradebook private
    write_text_atomic(target, "new")
    assert target.read_text() == "new" and mode(target) == 0o600


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    with pytest.raises(RuntimeError):
        with atomic_write(target, "w") as f:
            f.write("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "keep me" and [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
