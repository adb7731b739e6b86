"""Devices and seeds: where training runs, and how a rerun prints the same numbers."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def get_device(name="auto") -> torch.device:
    """'auto' picks CUDA, then Apple MPS, then the CPU. Any torch device name is accepted."""
    if isinstance(name, torch.device):
        return name
    if name is None or name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"Unknown device {name!r}. Use 'auto' (the best available), 'cpu', 'cuda', 'cuda:1' "
            f"or 'mps'."
        ) from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"Device {name!r} was asked for, but this PyTorch sees no CUDA GPU. "
                         "Use device='auto' to fall back to the CPU, or install a CUDA build of torch.")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"Device {name!r} does not exist: this machine has "
                         f"{torch.cuda.device_count()} CUDA device(s), numbered from 0.")
    if device.type == "mps" and not _mps_available():
        raise ValueError(f"Device {name!r} was asked for, but Apple MPS is not available here. "
                         "Use device='auto'.")
    return device


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps and mps.is_available())


def seed_everything(seed: int = 0) -> int:
    """Seed Python, NumPy and PyTorch (CPU and every GPU) so a rerun prints the same numbers."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    os.environ["PYTHONHASHSEED"] = str(seed)
    return seed
