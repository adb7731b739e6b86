"""The environment report: versions, the device the course will use, and where the dataset is
(lesson 00, `course doctor`)."""

from __future__ import annotations

import platform
import sys

import numpy as np
import torch

from .data import find_fashion_mnist
from .environment import get_device


def environment_report() -> dict:
    """Versions, the device the course will use, and where the dataset is."""
    import torchvision

    device = get_device("auto")
    report = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "device": str(device),
        "cpu threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(device)
    folder = find_fashion_mnist()
    report["fashion-mnist"] = str(folder) if folder else "not found (run: course data)"
    report["executable"] = sys.executable
    return report


def print_environment_report() -> None:
    report = environment_report()
    width = max(map(len, report))
    for key, value in report.items():
        print(f"{key:>{width}} : {value}")
