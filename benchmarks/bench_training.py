"""Benchmark: course_utils.fit against the conventional tutorial training loop, in one process.

Both train the notes' LeNet with batch normalization (sigmoid, batch 256, SGD lr 1.0) on the full
Fashion-MNIST and evaluate on the test set after every epoch, from the same initial weights:

  (a) baseline: torchvision's FashionMNIST dataset with ToTensor, a shuffling DataLoader with
      workers, `.to(device)` per batch, evaluation through a DataLoader;
  (b) course:   course_utils.fit on TensorLoaders that live on the device.

Prints each one's wall-clock examples/second and test accuracy, their ratio, and a final JSON line.

    python benchmarks/bench_training.py --epochs 3
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from course_utils import (TensorLoader, Standardize, fit, get_device, lenet,  # noqa: E402
                          load_fashion_mnist, normalization_stats, seed_everything)
from course_utils.data import FASHION_MNIST_FILES, find_fashion_mnist, _file_in  # noqa: E402


def torchvision_root(tmp: Path) -> Path:
    """torchvision's FashionMNIST wants the unpacked files in <root>/FashionMNIST/raw."""
    load_fashion_mnist()  # finds (or downloads) and verifies the files
    source = find_fashion_mnist()
    raw = tmp / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in FASHION_MNIST_FILES:
        src = _file_in(source, name)
        opener = gzip.open if src.suffix == ".gz" else open
        with opener(src, "rb") as f_in, open(raw / name, "wb") as f_out:
            shutil.copyfileobj(f_in, f_out)
    return tmp


def baseline(model, root, epochs, device, workers, limit=None):
    """The loop most tutorials teach."""
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    train_set = datasets.FashionMNIST(root, train=True, transform=transforms.ToTensor())
    test_set = datasets.FashionMNIST(root, train=False, transform=transforms.ToTensor())
    if limit:
        train_set, test_set = Subset(train_set, range(limit)), Subset(test_set, range(limit // 6))
    train_iter = DataLoader(train_set, batch_size=256, shuffle=True, num_workers=workers)
    test_iter = DataLoader(test_set, batch_size=256, shuffle=False, num_workers=workers)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    model.to(device)
    seen = 0
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for x, y in train_iter:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen += len(y)
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for x, y in test_iter:
                x, y = x.to(device), y.to(device)
                correct += (model(x).argmax(1) == y).sum().item()
                total += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return seen / seconds, correct / total


def course(model, epochs, device, limit=None):
    """The same training through course_utils.fit."""
    data = load_fashion_mnist()
    x_train, y_train = data.train_images, data.train_labels
    x_test, y_test = data.test_images, data.test_labels
    if limit:
        x_train, y_train, x_test, y_test = x_train[:limit], y_train[:limit], x_test[:limit // 6], y_test[:limit // 6]
    standardize = Standardize(*normalization_stats(x_train))
    train = TensorLoader(x_train, y_train, batch_size=256, shuffle=True, transform=standardize,
                         device=device)
    test = TensorLoader(x_test, y_test, batch_size=1024, transform=standardize, device=device)
    start = time.perf_counter()
    history = fit(model, train, test, epochs=epochs, lr=1.0, device=device, progress=False,
                  live_plot=False)
    seconds = time.perf_counter() - start
    return sum(len(y_train) for _ in range(epochs)) / seconds, history.last["val_acc"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="DataLoader workers of the baseline")
    parser.add_argument("--limit", type=int, default=None,
                        help="use only this many training images (a quick smoke run)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    device = get_device(args.device)

    seed_everything(args.seed)
    initial = lenet().state_dict()
    print(f"LeNet-BN, batch 256, SGD lr 1.0, {args.epochs} epoch(s), device {device}, "
          f"{torch.get_num_threads()} threads, baseline workers {args.workers}")

    with tempfile.TemporaryDirectory() as tmp:
        root = torchvision_root(Path(tmp))
        seed_everything(args.seed)
        model = lenet()
        model.load_state_dict(initial)
        base_speed, base_acc = baseline(model, root, args.epochs, device, args.workers, args.limit)
    print(f"baseline (DataLoader + ToTensor): {base_speed:8.0f} examples/s   test accuracy {base_acc:.4f}")

    seed_everything(args.seed)
    model = lenet()
    model.load_state_dict(initial)
    course_speed, course_acc = course(model, args.epochs, device, args.limit)
    print(f"course_utils.fit (TensorLoader):  {course_speed:8.0f} examples/s   test accuracy {course_acc:.4f}")
    ratio = course_speed / base_speed
    print(f"ratio: {ratio:.2f}x")
    print(json.dumps({"device": str(device), "epochs": args.epochs,
                      "baseline_ex_per_s": round(base_speed, 1), "course_ex_per_s": round(course_speed, 1),
                      "ratio": round(ratio, 3), "baseline_test_acc": round(base_acc, 4),
                      "course_test_acc": round(course_acc, 4)}))


if __name__ == "__main__":
    main()
