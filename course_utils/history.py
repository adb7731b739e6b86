"""History: what fit() measured, the loss of every iteration and one record per epoch."""

from __future__ import annotations

import operator
from dataclasses import dataclass, field


@dataclass
class History:
    """What fit() measured: the loss of every iteration, and one record per epoch.

    Each record is a dict with epoch, train_loss, train_acc, val_loss, val_acc, lr, seconds and
    examples_per_s (accuracies are None for regression, validation values None without val).

        history[-1]            the last epoch's record (history[2:5] a list of them)
        history["val_acc"]     that metric for every epoch
        for record in history: one record per epoch
    """

    iteration_loss: list[float] = field(default_factory=list)
    epochs: list[dict] = field(default_factory=list)
    label: str | None = None
    stop_reason: str | None = None
    iterations_per_epoch: int | None = None

    def __len__(self) -> int:
        return len(self.epochs)

    def __iter__(self):
        return iter(self.epochs)

    def __getitem__(self, key):
        if isinstance(key, str):
            if self.epochs and key not in self.epochs[0]:
                raise KeyError(f"No metric {key!r}; this History has {list(self.epochs[0])}.")
            return [record[key] for record in self.epochs]
        if isinstance(key, slice):
            return self.epochs[key]
        try:
            position = operator.index(key)  # an int, or a NumPy / torch integer (e.g. an argmin)
        except TypeError:
            position = None
        if position is not None:
            if not -len(self.epochs) <= position < len(self.epochs):
                raise IndexError(f"Epoch index {position} is out of range: this History has "
                                 f"{len(self.epochs)} epoch(s).")
            return self.epochs[position]
        raise TypeError(f"Index a History by position (history[-1]) or by metric name "
                        f"(history['val_acc']), not by {type(key).__name__}.")

    @property
    def last(self) -> dict:
        """The last epoch's record (the same as history[-1])."""
        if not self.epochs:
            raise IndexError("This History has no completed epoch yet.")
        return self.epochs[-1]

    def best(self, metric: str = "val_loss") -> dict:
        """The epoch record with the best value of `metric` (lowest loss, highest accuracy)."""
        values = [(v, r) for v, r in zip(self[metric], self.epochs) if v is not None]
        if not values:
            raise ValueError(f"No value of {metric!r} was recorded.")
        pick = min if "loss" in metric else max
        return pick(values, key=lambda pair: pair[0])[1]

    def to_dataframe(self):
        """One row per epoch, indexed by epoch number."""
        import pandas as pd

        return pd.DataFrame(self.epochs).set_index("epoch") if self.epochs else pd.DataFrame()

    def plot(self, **kwargs):
        """Learning curves: loss (per iteration and per epoch) and accuracy. See plots.plot_history."""
        from .plots import plot_history

        return plot_history(self, **kwargs)

    def state_dict(self) -> dict:
        return {"iteration_loss": list(self.iteration_loss), "epochs": [dict(r) for r in self.epochs],
                "label": self.label, "stop_reason": self.stop_reason,
                "iterations_per_epoch": self.iterations_per_epoch}

    @classmethod
    def from_state_dict(cls, state: dict) -> "History":
        return cls(**state)

    def __repr__(self) -> str:
        if not self.epochs:
            return f"History(label={self.label!r}, no epochs)"
        last = self.epochs[-1]
        shown = ", ".join(f"{k}={v:.4g}" for k, v in last.items()
                          if k in ("train_loss", "val_loss", "val_acc") and v is not None)
        return f"History(label={self.label!r}, epochs={len(self.epochs)}, {shown})"
