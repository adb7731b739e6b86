import gzip
import shutil

import pytest
import torch

from course_utils import load_fashion_mnist
from course_utils.data import FASHION_MNIST_FILES, _file_in, find_fashion_mnist


@pytest.fixture(scope="session")
def fmnist():
    """The real Fashion-MNIST, loaded once for the session."""
    return load_fashion_mnist(download=False)


@pytest.fixture
def dataset_copy(tmp_path):
    """A private copy of the four dataset files (gzip), safe to damage."""
    source = find_fashion_mnist()
    target = tmp_path / "fmnist"
    target.mkdir()
    for name in FASHION_MNIST_FILES:
        src = _file_in(source, name)
        if src.suffix == ".gz":
            shutil.copy(src, target / src.name)
        else:
            with open(src, "rb") as f_in, gzip.open(target / (name + ".gz"), "wb") as f_out:
                shutil.copyfileobj(f_in, f_out)
    return target


@pytest.fixture
def no_dataset_anywhere(tmp_path, monkeypatch):
    """Make every place the loader looks empty."""
    import course_utils.data as data

    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "no-debian-package")
    return tmp_path


@pytest.fixture
def spirals():
    from course_utils import make_spirals
    x, y = make_spirals(n_per_class=200, seed=0)
    return x, y


def small_mlp(in_features=2, hidden=32, classes=3):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(in_features, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, classes))
