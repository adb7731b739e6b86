"""The learning-rate range test (lesson 07): raise the rate at every step until the loss explodes.

    result = lr_find(model, train)          # the model's weights are left as they were
    result.plot()
    fit(model, train, val, lr=result.suggested_lr)

Leslie Smith's recipe: train for a few hundred steps while the rate grows exponentially from tiny
to huge, and record the loss. It falls once the rate is large enough to make progress, flattens,
then explodes. The rate at the bottom of the curve is the largest that still makes the loss fall
fastest; training a little below it (the suggestion: a third of it) is fast and stable.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from .environment import get_device
from .training import _as_loader, _move, _resolve_loss, _resolve_optimizer


@dataclass
class LRFindResult:
    """What lr_find measured: one rate and one smoothed loss per step, until the loss exploded."""

    lrs: list[float]
    losses: list[float]            # smoothed (bias-corrected exponential moving average)
    raw_losses: list[float]
    exploded: bool                 # True when the test stopped because the loss blew up

    @property
    def min_loss_lr(self) -> float:
        """The rate where the smoothed loss was lowest: the largest rate that still helps most."""
        return self.lrs[min(range(len(self.losses)), key=self.losses.__getitem__)]

    @property
    def suggested_lr(self) -> float:
        """Slightly below the largest stable rate: a third of min_loss_lr."""
        return self.min_loss_lr / 3

    def plot(self, ax=None):
        """Smoothed loss against the rate (log scale), with the minimum and the suggestion marked."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(self.lrs, self.raw_losses, color="0.8", lw=0.8, label="loss per batch")
        ax.plot(self.lrs, self.losses, color="C0", label="smoothed")
        ax.axvline(self.min_loss_lr, color="C3", ls="--", label=f"lowest loss at {self.min_loss_lr:.2g}")
        ax.axvline(self.suggested_lr, color="C2", ls=":", label=f"suggested {self.suggested_lr:.2g}")
        ax.set_xscale("log")
        low, high = min(self.losses), self.losses[0]
        ax.set_ylim(low - 0.1 * (high - low), high + 0.6 * (high - low) + 1e-12)
        ax.set_xlabel("learning rate"); ax.set_ylabel("training loss")
        ax.set_title("learning-rate range test"); ax.legend(fontsize=8); ax.grid(alpha=0.3)
        return ax


def lr_find(model: nn.Module, train, *, optimizer="sgd", loss="cross_entropy", start_lr: float = 1e-5,
            end_lr: float = 10.0, steps: int = 100, smoothing: float = 0.9, explode_factor: float = 4.0,
            batch_size: int = 256, device="auto") -> LRFindResult:
    """Run the learning-rate range test on `model` and return an LRFindResult.

    The rate grows geometrically from start_lr to end_lr over `steps` batches (the training data is
    cycled if it has fewer). The test stops early once the smoothed loss exceeds `explode_factor`
    times its lowest value, or is not finite. `optimizer` is a name ('sgd', 'adam', ...) or a
    function params -> optimizer (e.g. lambda p: torch.optim.SGD(p, lr=1, momentum=0.9)).
    The model's weights and buffers are restored afterwards, so it can then be trained normally.
    """
    if not 0 < start_lr < end_lr:
        raise ValueError(f"Need 0 < start_lr < end_lr, got start_lr={start_lr}, end_lr={end_lr}.")
    if steps < 2:
        raise ValueError(f"steps must be at least 2, got {steps}.")
    if not 0 <= smoothing < 1:
        raise ValueError(f"smoothing is an EMA beta in [0, 1), got {smoothing}.")
    device = get_device(device)
    model.to(device)
    saved = copy.deepcopy(model.state_dict())
    loss_fn = _resolve_loss(loss)
    opt = optimizer(model.parameters()) if callable(optimizer) and not isinstance(optimizer, str) \
        else _resolve_optimizer(model, optimizer, start_lr)
    loader = _as_loader(train, batch_size, True, device)
    factor = (end_lr / start_lr) ** (1 / (steps - 1))
    lrs, losses, raw, average, exploded = [], [], [], 0.0, False
    model.train()
    try:
        batches = iter(loader)
        for step in range(steps):
            try:
                x, y = _move(next(batches), device)
            except StopIteration:
                batches = iter(loader)
                x, y = _move(next(batches), device)
            lr = start_lr * factor ** step
            for group in opt.param_groups:
                group["lr"] = lr
            batch_loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            batch_loss.backward()
            opt.step()
            value = batch_loss.item()
            if not math.isfinite(value):
                exploded = True
                break
            if value < 0:
                raise ValueError(f"The loss is negative ({value:.3g}) at lr={lr:.3g}: the range test needs a loss "
                                 "that cannot go below 0, such as cross-entropy. A negative classification loss "
                                 "usually means the loss does not match the outputs (F.nll_loss on raw logits: "
                                 "use F.cross_entropy, or log_softmax first).")
            average = smoothing * average + (1 - smoothing) * value
            smoothed = average / (1 - smoothing ** (step + 1))          # bias correction (lesson 07)
            lrs.append(lr); raw.append(value); losses.append(smoothed)
            if smoothed > explode_factor * min(losses):
                exploded = True
                break
    finally:
        model.load_state_dict(saved)
    if len(lrs) < 2:
        raise RuntimeError(f"The loss was not finite from the first steps (at lr={start_lr:g}). "
                           "Check the data and the model, or lower start_lr.")
    return LRFindResult(lrs, losses, raw, exploded)
