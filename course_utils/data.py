"""Datasets of the course and a loader that serves mini-batches straight from the device.

Fashion-MNIST is found on disk (COURSE_DATA_DIR, the user cache, Debian's package), verified by
checksum, and only downloaded as a last resort. Notebook 00 tours it; every lesson loads it.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .environment import get_device
from .files import atomic_write

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

# SHA-256 of the *decompressed* IDX files: the same whichever mirror or gzip level they came from.
FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
APT_FIX = "sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist"


class DatasetError(RuntimeError):
    """The dataset is missing or damaged. The message says how to fix it."""


# ---------------------------------------------------------------------------------------------
# Finding and reading Fashion-MNIST
# ---------------------------------------------------------------------------------------------

def cache_dir() -> Path:
    """Where downloaded data is kept: $COURSE_DATA_DIR, else ~/.cache/course_utils/fashion-mnist."""
    if os.environ.get("COURSE_DATA_DIR"):
        return Path(os.environ["COURSE_DATA_DIR"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "course_utils" / "fashion-mnist"


def candidate_dirs(data_dir: str | Path | None = None) -> list[Path]:
    """The folders searched for Fashion-MNIST, in order."""
    dirs = [Path(data_dir).expanduser()] if data_dir is not None else []
    dirs += [cache_dir(), DEBIAN_DIR]
    unique = []
    for d in dirs:
        for sub in (d, d / "FashionMNIST" / "raw"):  # torchvision's own layout too
            if sub not in unique:
                unique.append(sub)
    return unique


def _file_in(folder: Path, name: str) -> Path | None:
    for candidate in (folder / (name + ".gz"), folder / name):
        if candidate.is_file():
            return candidate
    return None


def find_fashion_mnist(data_dir: str | Path | None = None) -> Path | None:
    """The first folder that holds all four Fashion-MNIST files, or None."""
    for folder in candidate_dirs(data_dir):
        if all(_file_in(folder, name) for name in FASHION_MNIST_FILES):
            return folder
    return None


def _fix_for(path: Path) -> str:
    if path.is_relative_to(DEBIAN_DIR):
        return "reinstall Debian's copy: sudo apt-get install --reinstall dataset-fashion-mnist"
    return f"delete it and fetch a fresh copy: rm '{path}' && course data"


def _read_verified(path: Path, expected_sha256: str) -> bytes:
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as err:  # zlib: a damaged deflate stream
        raise DatasetError(f"Fashion-MNIST file {path} cannot be read ({err}). Fix: {_fix_for(path)}") from err
    digest = hashlib.sha256(raw).hexdigest()
    if digest != expected_sha256:
        raise DatasetError(
            f"Fashion-MNIST file {path} is corrupt: its SHA-256 is {digest[:16]}..., "
            f"expected {expected_sha256[:16]}.... Fix: {_fix_for(path)}"
        )
    return raw


def _parse_idx(raw: bytes) -> np.ndarray:
    """IDX format: 2 zero bytes, a type byte (0x08 = uint8), the number of dims, big-endian sizes."""
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def download_fashion_mnist(target: str | Path | None = None) -> Path:
    """Download through torchvision into `target` (default: the cache), atomically, and verify."""
    from torchvision.datasets import FashionMNIST

    target = Path(target) if target is not None else cache_dir()
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target, prefix=".download-") as tmp:
        try:
            FashionMNIST(tmp, train=True, download=True)
            FashionMNIST(tmp, train=False, download=True)
        except Exception as err:  # torchvision raises RuntimeError or URLError when offline
            raise DatasetError(_missing_message(data_dir=target, download_error=err)) from err
        raw_dir = Path(tmp) / "FashionMNIST" / "raw"
        for name, sha in FASHION_MNIST_FILES.items():
            _read_verified(raw_dir / (name + ".gz"), sha)
        for name in FASHION_MNIST_FILES:
            os.replace(raw_dir / (name + ".gz"), target / (name + ".gz"))
    return target


def _missing_message(data_dir=None, download_error=None) -> str:
    looked = "\n".join(f"  - {d}" for d in candidate_dirs(data_dir))
    why = f"\nThe download failed too: {download_error}" if download_error else ""
    return (
        "Fashion-MNIST was not found. Looked in:\n" + looked + why + "\n"
        "Fix, any one of:\n"
        f"  - on Debian/Ubuntu (works offline): {APT_FIX}\n"
        "  - with internet access: course data   (downloads into the cache)\n"
        "  - set COURSE_DATA_DIR to a folder holding the four *-ubyte(.gz) files"
    )


@dataclass
class FashionMNIST:
    """Fashion-MNIST as uint8 image tensors (N, 28, 28) and int64 label tensors (N,)."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...] = FASHION_MNIST_CLASSES
    folder: Path | None = None

    def __repr__(self) -> str:
        return (f"FashionMNIST(train={tuple(self.train_images.shape)}, "
                f"test={tuple(self.test_images.shape)}, folder='{self.folder}')")


def load_fashion_mnist(data_dir: str | Path | None = None, download: bool = True) -> FashionMNIST:
    """Load the 60,000 training and 10,000 test images, verified by checksum.

    Looks in `data_dir`, $COURSE_DATA_DIR, the user cache, then Debian's dataset-fashion-mnist;
    downloads through torchvision only when all of those are empty and `download` is True.
    """
    folder = find_fashion_mnist(data_dir)
    if folder is None:
        if not download:
            raise DatasetError(_missing_message(data_dir))
        folder = download_fashion_mnist(data_dir)
    arrays = {name: _parse_idx(_read_verified(_file_in(folder, name), sha))
              for name, sha in FASHION_MNIST_FILES.items()}
    as_tensor = lambda a, dtype: torch.from_numpy(a.copy()).to(dtype)  # noqa: E731
    return FashionMNIST(
        train_images=as_tensor(arrays["train-images-idx3-ubyte"], torch.uint8),
        train_labels=as_tensor(arrays["train-labels-idx1-ubyte"], torch.int64),
        test_images=as_tensor(arrays["t10k-images-idx3-ubyte"], torch.uint8),
        test_labels=as_tensor(arrays["t10k-labels-idx1-ubyte"], torch.int64),
        folder=folder,
    )


def copy_to_cache(source: Path, target: Path | None = None) -> Path:
    """Copy verified files into the cache (used by `course data --copy`), each file atomically."""
    target = Path(target) if target is not None else cache_dir()
    target.mkdir(parents=True, exist_ok=True)
    for name, sha in FASHION_MNIST_FILES.items():
        src = _file_in(source, name)
        _read_verified(src, sha)
        with src.open("rb") as f_in, atomic_write(target / src.name) as f_out:
            shutil.copyfileobj(f_in, f_out)
    return target


# ---------------------------------------------------------------------------------------------
# Splits and normalization
# ---------------------------------------------------------------------------------------------

def train_val_split(images, labels, val_fraction: float = 1 / 6, seed: int = 0):
    """Stratified, seeded split: every class keeps its share in both parts.

    Returns ((train_images, train_labels), (val_images, val_labels)).
    """
    from sklearn.model_selection import train_test_split

    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}.")
    index = np.arange(len(labels))
    train_idx, val_idx = train_test_split(
        index, test_size=val_fraction, random_state=seed, stratify=np.asarray(labels))
    train_idx, val_idx = torch.from_numpy(np.sort(train_idx)), torch.from_numpy(np.sort(val_idx))
    return (images[train_idx], labels[train_idx]), (images[val_idx], labels[val_idx])


def normalization_stats(train_images: torch.Tensor, per_pixel: bool = False):
    """Mean and standard deviation of the *training* images, on the 0..1 scale.

    Compute these on the training split only and apply them to validation and test data;
    computing them on everything leaks information from the held-out data (lesson 02).
    """
    x = train_images.float() / 255 if train_images.dtype == torch.uint8 else train_images.float()
    if per_pixel:
        return x.mean(dim=0), x.std(dim=0).clamp_min(1e-6)
    return x.mean(), x.std()


class Standardize:
    """Per-batch transform: uint8 images -> float, scaled to 0..1, then (x - mean) / std,
    with a channel dimension added so a (B, 28, 28) batch becomes (B, 1, 28, 28)."""

    def __init__(self, mean, std):
        self.mean = torch.as_tensor(mean, dtype=torch.float32)
        self.std = torch.as_tensor(std, dtype=torch.float32)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean.device != x.device:
            self.mean, self.std = self.mean.to(x.device), self.std.to(x.device)
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        x = (x - self.mean) / self.std
        return x.unsqueeze(1) if x.dim() == 3 else x

    def __repr__(self) -> str:
        m, s = self.mean, self.std
        show = lambda t: f"{t.item():.4f}" if t.numel() == 1 else f"<{tuple(t.shape)}>"  # noqa: E731
        return f"Standardize(mean={show(m)}, std={show(s)})"


# ---------------------------------------------------------------------------------------------
# Mini-batches that never leave the device
# ---------------------------------------------------------------------------------------------

class TensorLoader:
    """Serve mini-batches from tensors that already live on the target device.

    The usual DataLoader builds each batch in Python, one sample at a time, then copies it to the
    GPU. Here the whole dataset is moved once; a batch is one indexing operation on the device,
    and `transform` (normalization, augmentation) runs on the whole batch there too.
    The shuffle order comes from its own CPU generator, so it is the same on every device and
    can be saved and restored (see `state_dict`) for resuming training. With a `seed` it starts
    from that seed once. Without one (the default), each pass over the data reseeds it with a
    number drawn from torch's global generator, as DataLoader does: after seed_everything(s) the
    order follows s, and the global generator is never reseeded.
    """

    def __init__(self, *tensors, batch_size: int = 256, shuffle: bool = False, transform=None,
                 drop_last: bool = False, device="auto", seed: int | None = None):
        if not tensors:
            raise ValueError("TensorLoader needs at least one tensor, e.g. TensorLoader(images, labels).")
        n = len(tensors[0])
        if any(len(t) != n for t in tensors):
            sizes = ", ".join(str(len(t)) for t in tensors)
            raise ValueError(f"All tensors must have the same length (first dimension); got {sizes}.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        self.device = get_device(device)
        self.tensors = tuple(torch.as_tensor(t).to(self.device) for t in tensors)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.transform = transform
        self.seed = seed
        self.generator = torch.Generator()
        self.generator.manual_seed(seed if seed is not None else 0)

    def __len__(self) -> int:
        n = len(self.tensors[0])
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def num_examples(self) -> int:
        return len(self.tensors[0])

    def __iter__(self):
        n, bs = len(self.tensors[0]), self.batch_size
        if self.shuffle and self.seed is None:  # follow the global generator, as DataLoader does
            self.generator.manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
        order = torch.randperm(n, generator=self.generator).to(self.device) if self.shuffle else None
        for start in range(0, len(self) * bs, bs):
            if order is None:
                batch = [t[start:start + bs] for t in self.tensors]
            else:
                idx = order[start:start + bs]
                batch = [t[idx] for t in self.tensors]
            if self.transform is not None:
                batch[0] = self.transform(batch[0])
            yield batch

    def to(self, device) -> "TensorLoader":
        """The same loader on another device (the shuffle state travels with it)."""
        device = get_device(device)
        if device == self.device:
            return self
        clone = TensorLoader(*self.tensors, batch_size=self.batch_size, shuffle=self.shuffle,
                             transform=self.transform, drop_last=self.drop_last, device=device,
                             seed=self.seed)
        clone.generator.set_state(self.generator.get_state())
        return clone

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    def __repr__(self) -> str:
        shapes = ", ".join(str(tuple(t.shape)) for t in self.tensors)
        return (f"TensorLoader({shapes}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"device='{self.device}', transform={self.transform})")


def fashion_mnist_loaders(batch_size: int = 256, val_fraction: float = 1 / 6, device="auto",
                          seed: int = 0, train_transform=None, data_dir=None):
    """The common case in one call: train / validation / test TensorLoaders for Fashion-MNIST.

    The split is stratified and seeded; normalization statistics come from the training split
    only. `train_transform` runs on each whole training batch, after normalization. Careful with
    torchvision's random transforms: given a batch, they draw one set of random parameters for all
    of its images; apply them image by image instead (lesson 03 shows both).
    """
    data = load_fashion_mnist(data_dir)
    (x_tr, y_tr), (x_val, y_val) = train_val_split(data.train_images, data.train_labels,
                                                   val_fraction, seed)
    standardize = Standardize(*normalization_stats(x_tr))
    train_tf = standardize if train_transform is None else (lambda x: train_transform(standardize(x)))
    device = get_device(device)
    train = TensorLoader(x_tr, y_tr, batch_size=batch_size, shuffle=True, transform=train_tf,
                         device=device, seed=seed)
    val = TensorLoader(x_val, y_val, batch_size=1024, transform=standardize, device=device)
    test = TensorLoader(data.test_images, data.test_labels, batch_size=1024,
                        transform=standardize, device=device)
    return train, val, test


# ---------------------------------------------------------------------------------------------
# Small synthetic sets for fast, visual experiments
# ---------------------------------------------------------------------------------------------

def make_spirals(n_per_class: int = 200, n_classes: int = 3, noise: float = 0.2, seed: int = 0):
    """Interleaved spiral arms in 2-D: not linearly separable. Returns (X float32 (N, 2), y int64)."""
    g = torch.Generator().manual_seed(seed)
    r = torch.linspace(0.05, 1.0, n_per_class)
    xs, ys = [], []
    for k in range(n_classes):
        theta = torch.linspace(0, 4.0, n_per_class) + 2 * torch.pi * k / n_classes
        theta = theta + noise * torch.randn(n_per_class, generator=g)
        xs.append(torch.stack([r * torch.sin(theta), r * torch.cos(theta)], dim=1))
        ys.append(torch.full((n_per_class,), k, dtype=torch.int64))
    return torch.cat(xs), torch.cat(ys)


def make_moons(n_samples: int = 400, noise: float = 0.15, seed: int = 0):
    """Two interleaving half circles (scikit-learn's make_moons) as tensors."""
    from sklearn.datasets import make_moons as sk_make_moons

    X, y = sk_make_moons(n_samples=n_samples, noise=noise, random_state=seed)
    return torch.tensor(X, dtype=torch.float32), torch.tensor(y, dtype=torch.int64)


def make_polynomial_regression(n_samples: int = 30, coefficients=(0.5, -1.0, 0.0, 2.0),
                               noise: float = 0.3, x_range=(-1.0, 1.0), seed: int = 0):
    """y = sum_k c_k x^k + Gaussian noise, x uniform in x_range. Returns (x (N,), y (N,))."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = x_range
    x = lo + (hi - lo) * torch.rand(n_samples, generator=g)
    y = sum(c * x ** k for k, c in enumerate(coefficients)) + noise * torch.randn(n_samples, generator=g)
    return x, y
