"""fit(), evaluate() and predict(): the training loop of every lesson.

Notebook 01 writes this loop by hand in a dozen lines (forward, loss, backward, step); fit() is
the same loop plus what a course needs around it: a History, validation, progress, a live plot,
callbacks, resuming, clear errors, and the CUDA speed-ups switched on for you.
"""

from __future__ import annotations

import contextlib
import copy
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .data import TensorLoader
from .environment import get_device
from .files import atomic_write

LOSSES = {
    "cross_entropy": F.cross_entropy,
    "mse": F.mse_loss,
    "l1": F.l1_loss,
    "bce_with_logits": F.binary_cross_entropy_with_logits,
}
CLASSIFICATION_LOSSES = (F.cross_entropy, nn.CrossEntropyLoss)
OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
              "rmsprop": torch.optim.RMSprop}
NAN_CHECK_EVERY = 25  # iterations between non-finite loss checks (each check waits for the GPU)


class NonFiniteLossWarning(RuntimeWarning):
    """Training stopped because the loss became NaN or infinite."""


# ---------------------------------------------------------------------------------------------
# History
# ---------------------------------------------------------------------------------------------

@dataclass
class History:
    """What fit() measured: the loss of every iteration, and one record per epoch.

    Each record holds epoch, train_loss, train_acc, val_loss, val_acc, lr, seconds and
    examples_per_s (accuracies are None for regression, validation values None without val).
    """

    iteration_loss: list[float] = field(default_factory=list)
    epochs: list[dict] = field(default_factory=list)
    label: str | None = None
    stop_reason: str | None = None
    iterations_per_epoch: int | None = None

    def __len__(self) -> int:
        return len(self.epochs)

    def __getitem__(self, metric: str) -> list:
        """history["val_acc"] -> that metric for every epoch."""
        if self.epochs and metric not in self.epochs[0]:
            raise KeyError(f"No metric {metric!r}; this History has {list(self.epochs[0])}.")
        return [record[metric] for record in self.epochs]

    @property
    def last(self) -> dict:
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


# ---------------------------------------------------------------------------------------------
# The state callbacks see
# ---------------------------------------------------------------------------------------------

class TrainingRun:
    """Everything a callback may read or change while fit() runs."""

    def __init__(self, model, optimizer, train, val, device, epochs, history, scaler, callbacks):
        self.model, self.optimizer, self.train, self.val = model, optimizer, train, val
        self.device, self.epochs, self.history = device, epochs, history
        self.scaler, self.callbacks = scaler, callbacks
        self.epoch = 0          # index of the epoch running now (0-based)
        self.iteration = 0      # optimizer steps taken so far
        self.stop_reason: str | None = None
        self._unscaled = False  # float16 gradients already unscaled in this step?

    @property
    def batches_per_epoch(self) -> int:
        return len(self.train)

    def request_stop(self, reason: str) -> None:
        """Finish the current epoch's bookkeeping and stop (early stopping uses this)."""
        self.stop_reason = reason

    def unscale_gradients(self) -> None:
        """With float16 mixed precision, gradients are scaled; call this before reading them."""
        if self.scaler is not None and not self._unscaled:
            self.scaler.unscale_(self.optimizer)
            self._unscaled = True

    def checkpoint_state(self) -> dict:
        """All that is needed to continue this run later exactly where it is now."""
        state = {
            "format": 1,
            "epoch": len(self.history.epochs),
            "iteration": self.iteration,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "history": self.history.state_dict(),
            "callbacks": [[type(cb).__name__, cb.state_dict()] for cb in self.callbacks],
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "train_loader": self.train.state_dict() if isinstance(self.train, TensorLoader) else None,
        }
        return state

    def load_checkpoint_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        restored = History.from_state_dict(state["history"])
        self.history.iteration_loss[:] = restored.iteration_loss
        self.history.epochs[:] = restored.epochs
        saved = list(state["callbacks"])  # matched by type, in order: the lists may differ
        for cb in self.callbacks:
            match = next((entry for entry in saved if entry[0] == type(cb).__name__), None)
            if match is not None:
                cb.load_state_dict(match[1])
                saved.remove(match)
        torch.set_rng_state(state["rng_cpu"])
        if state["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        if state["train_loader"] is not None and isinstance(self.train, TensorLoader):
            self.train.load_state_dict(state["train_loader"])
        self.iteration = state["iteration"]


def save_atomic(obj, path) -> Path:
    """torch.save through a temporary file and a rename: never a half-written checkpoint."""
    with atomic_write(path) as f:
        torch.save(obj, f)
    return Path(path)


# ---------------------------------------------------------------------------------------------
# Helpers: inputs, losses, shapes, devices
# ---------------------------------------------------------------------------------------------

def _as_loader(data, batch_size, shuffle, device):
    """Accept a TensorLoader, any iterable of batches (e.g. a DataLoader), or an (x, y) tuple."""
    if data is None:
        return None
    if isinstance(data, TensorLoader):
        return data.to(device)
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(torch.is_tensor(t) for t in data):
        return TensorLoader(*data, batch_size=batch_size, shuffle=shuffle, device=device)
    if hasattr(data, "__iter__") and hasattr(data, "__len__") and not isinstance(data, (str, bytes)):
        return data
    raise TypeError(
        f"Cannot train on a {type(data).__name__}. Pass a course_utils TensorLoader, a torch "
        "DataLoader, or a tuple (inputs, targets) of tensors.")


def _resolve_loss(loss):
    if isinstance(loss, str):
        if loss not in LOSSES:
            raise ValueError(f"Unknown loss {loss!r}. Use one of {sorted(LOSSES)} or pass a function.")
        return LOSSES[loss]
    if callable(loss):
        return loss
    raise TypeError(f"loss must be a name or a function (output, target) -> scalar, got {loss!r}.")


def _resolve_optimizer(model, optimizer, lr):
    if isinstance(optimizer, torch.optim.Optimizer):
        if lr is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr
        return optimizer
    if isinstance(optimizer, str):
        if optimizer.lower() not in OPTIMIZERS:
            raise ValueError(f"Unknown optimizer {optimizer!r}. Use one of {sorted(OPTIMIZERS)}, "
                             "or pass a torch.optim optimizer.")
        optimizer = OPTIMIZERS[optimizer.lower()]
    if lr is None:
        raise ValueError("fit() needs a learning rate: pass lr=0.1 (say), or a ready optimizer, "
                         "e.g. optimizer=torch.optim.SGD(model.parameters(), lr=0.1).")
    return optimizer(model.parameters(), lr=lr)


def check_output_matches_target(output: torch.Tensor, target: torch.Tensor, loss_fn) -> None:
    """Catch the classic shape bugs on the first batch, before they train a wrong model silently."""
    is_classification = loss_fn in CLASSIFICATION_LOSSES or isinstance(loss_fn, nn.CrossEntropyLoss)
    out, tgt = tuple(output.shape), tuple(target.shape)
    if is_classification and not target.is_floating_point():
        if output.dim() != 2 or output.shape[0] != target.shape[0]:
            raise ValueError(
                f"The model's output has shape {out}, but the labels have shape {tgt}. "
                "Cross-entropy needs outputs of shape (batch, num_classes). Fix: end the model "
                "with nn.Linear(features, num_classes), with nn.Flatten() before it for images.")
        if target.dim() != 1:
            raise ValueError(f"The labels have shape {tgt}; class labels must be 1-D (batch,). "
                             "Fix: pass labels.squeeze(1) or labels.view(-1).")
        top = int(target.max())
        if top >= output.shape[1]:
            raise ValueError(
                f"The model's output has shape {out}: {output.shape[1]} classes, but the labels go "
                f"up to {top}. Fix: make the last layer output {top + 1} values, e.g. "
                f"nn.Linear(features, {top + 1}).")
    elif loss_fn in (F.mse_loss, F.l1_loss, F.binary_cross_entropy_with_logits) and out != tgt:
        raise ValueError(
            f"The model's output has shape {out} but the targets have shape {tgt}; the loss would "
            "broadcast them into a wrong answer without an error. Fix: make them equal, e.g. "
            "output.squeeze(-1) or targets.unsqueeze(-1).")


def _is_classification(output, target) -> bool:
    return output.dim() == 2 and output.shape[1] > 1 and not target.is_floating_point()


def _move(batch, device):
    return [t.to(device, non_blocking=True) if torch.is_tensor(t) else t for t in batch]


@contextlib.contextmanager
def _speedups(device: torch.device, fast: bool):
    """On CUDA with fast=True: cuDNN autotuning and TF32 matrix maths, restored afterwards."""
    if device.type != "cuda" or not fast:
        yield
        return
    saved = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
             torch.backends.cudnn.allow_tf32)
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
         torch.backends.cudnn.allow_tf32) = saved


def _amp_dtype(device: torch.device, fast: bool):
    """Mixed precision on CUDA: bfloat16 where the GPU has it (no loss scaling needed), else float16."""
    if device.type != "cuda" or not fast:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


# ---------------------------------------------------------------------------------------------
# fit
# ---------------------------------------------------------------------------------------------

def fit(model: nn.Module, train, val=None, *, epochs: int = 10, optimizer="sgd", lr: float | None = None,
        loss="cross_entropy", batch_size: int = 256, device="auto", callbacks=(), fast: bool = True,
        progress: bool = True, live_plot="auto", resume=None, nan_guard: bool = True,
        label: str | None = None) -> History:
    """Train `model` on `train` for `epochs` epochs and return a History.

    train / val: a TensorLoader, a torch DataLoader, or an (inputs, targets) tuple of tensors
        (then batched with `batch_size`, shuffled for training).
    optimizer: a torch.optim optimizer, or a name ('sgd', 'adam', 'adamw', 'rmsprop') used with `lr`.
    loss: 'cross_entropy' (default), 'mse', 'l1', 'bce_with_logits', or a function (output, target).
    device: 'auto' picks CUDA, then Apple MPS, then the CPU. On CUDA, fast=True turns on mixed
        precision (bfloat16, or float16 with loss scaling), TF32 and cuDNN autotuning.
    callbacks: EarlyStopping, Checkpoint, LRScheduler, GradientClipping, ... (course_utils.callbacks).
    live_plot: 'auto' draws updating learning curves in Jupyter; True / False force it.
    resume: a checkpoint file written by Checkpoint; training continues from its last epoch.
    nan_guard: stop with a clear message when the loss becomes NaN or infinite, restoring the
        weights from the end of the last good epoch.
    Ctrl-C (or the notebook's stop button) ends training cleanly and returns the History so far.
    """
    from .callbacks import Checkpoint, LivePlot, ProgressBar

    if not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be a whole number >= 0, got {epochs!r}.")
    device = get_device(device)
    model.to(device)
    train = _as_loader(train, batch_size, True, device)
    val = _as_loader(val, batch_size, False, device)
    if len(train) == 0:
        raise ValueError("The training data has no batches: it is empty, or smaller than "
                         "batch_size with drop_last=True.")
    loss_fn = _resolve_loss(loss)
    optimizer = _resolve_optimizer(model, optimizer, lr)
    amp_dtype = _amp_dtype(device, fast)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None

    callbacks = list(callbacks)
    if resume is True:
        found = [cb for cb in callbacks if isinstance(cb, Checkpoint)]
        if not found:
            raise ValueError("resume=True needs a Checkpoint callback; or pass resume='path/to/file.pt'.")
        resume = found[0].path
    if live_plot == "auto":
        live_plot = LivePlot.available()
    if live_plot and not any(isinstance(cb, LivePlot) for cb in callbacks):
        callbacks.append(LivePlot())
    if progress:
        callbacks.append(ProgressBar())
    callbacks.sort(key=lambda cb: getattr(cb, "order", 0))  # checkpoints last, after schedulers

    history = History(label=label, iterations_per_epoch=len(train))
    run = TrainingRun(model, optimizer, train, val, device, epochs, history, scaler, callbacks)
    for cb in callbacks:
        cb.on_train_begin(run)
    start_epoch = 0
    if resume is not None:
        resume = Path(resume)
        if resume.exists():
            run.load_checkpoint_state(torch.load(resume, map_location=device, weights_only=True))
            start_epoch = len(history.epochs)
            print(f"Resumed from {resume}: {start_epoch} of {epochs} epochs already done.")
        else:
            print(f"No checkpoint at {resume} yet: starting from scratch.")

    autocast = lambda: torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)  # noqa: E731
    checked_shapes = False
    try:
        with _speedups(device, fast):
            for epoch in range(start_epoch, epochs):
                run.epoch = epoch
                good_weights = copy.deepcopy(model.state_dict()) if nan_guard else None
                for cb in callbacks:
                    cb.on_epoch_begin(run)
                model.train()
                started = time.perf_counter()
                batch_losses, batch_sizes, correct = [], [], None
                for batch in train:
                    x, y = _move(batch, device) if not isinstance(train, TensorLoader) else batch
                    with autocast():
                        output = model(x)
                        if not checked_shapes:
                            check_output_matches_target(output, y, loss_fn)
                            checked_shapes = True
                        loss_value = loss_fn(output, y)
                    optimizer.zero_grad(set_to_none=True)
                    run._unscaled = False
                    if scaler is not None:
                        scaler.scale(loss_value).backward()
                    else:
                        loss_value.backward()
                    for cb in callbacks:
                        cb.on_after_backward(run)
                    if scaler is not None:
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        optimizer.step()
                    batch_losses.append(loss_value.detach())
                    batch_sizes.append(len(y))
                    if _is_classification(output, y):
                        hits = (output.detach().argmax(1) == y).sum()
                        correct = hits if correct is None else correct + hits
                    run.iteration += 1
                    for cb in callbacks:
                        cb.on_batch_end(run, loss_value)
                    if nan_guard and run.iteration % NAN_CHECK_EVERY == 0:
                        if not torch.isfinite(torch.stack(batch_losses[-NAN_CHECK_EVERY:])).all():
                            break
                    if run.stop_reason:
                        break
                losses = torch.stack(batch_losses).float().cpu()
                seconds = time.perf_counter() - started
                history.iteration_loss.extend(losses.tolist())
                if nan_guard and not torch.isfinite(losses).all():
                    _stop_on_non_finite(run, losses, good_weights)
                    break
                seen = sum(batch_sizes)
                weights = torch.tensor(batch_sizes, dtype=torch.float32)
                record = {
                    "epoch": epoch + 1,
                    "train_loss": float((losses * weights).sum() / seen),
                    "train_acc": float(correct) / seen if correct is not None else None,
                    "val_loss": None,
                    "val_acc": None,
                    "lr": optimizer.param_groups[0]["lr"],
                    "seconds": seconds,
                    "examples_per_s": seen / seconds,
                }
                if val is not None:
                    scores = evaluate(model, val, loss=loss_fn, device=device, fast=fast)
                    record["val_loss"], record["val_acc"] = scores["loss"], scores["acc"]
                history.epochs.append(record)
                for cb in callbacks:
                    cb.on_epoch_end(run, record)
                if run.stop_reason:
                    break
    except KeyboardInterrupt:
        run.stop_reason = "interrupted"
        print(f"\nTraining interrupted during epoch {run.epoch + 1}: returning the History of the "
              f"{len(history.epochs)} completed epoch(s); the model keeps its current weights.")
    finally:
        history.stop_reason = run.stop_reason
        for cb in callbacks:
            cb.on_train_end(run)
    return history


def _stop_on_non_finite(run: TrainingRun, losses: torch.Tensor, good_weights) -> None:
    bad = int((~torch.isfinite(losses)).nonzero()[0])
    iteration = run.iteration - len(losses) + bad + 1
    value = losses[bad].item()
    run.model.load_state_dict(good_weights)
    run.stop_reason = "non-finite loss"
    done = len(run.history.epochs)
    kept = f"the end of epoch {done}" if done else "before training started"
    message = (
        f"The loss became {value} at iteration {iteration} (epoch {run.epoch + 1}); training stopped "
        f"and the model keeps its weights from {kept}. Usual fixes: a smaller learning rate "
        f"(lr is {run.optimizer.param_groups[0]['lr']:g} now), gradient clipping "
        "(callbacks=[GradientClipping(1.0)]), or checking the inputs for NaN or huge values.")
    print(message)
    warnings.warn(message, NonFiniteLossWarning, stacklevel=3)


# ---------------------------------------------------------------------------------------------
# evaluate and predict
# ---------------------------------------------------------------------------------------------

def _batches(data, device, batch_size=1024):
    if torch.is_tensor(data):
        for start in range(0, len(data), batch_size):
            yield data[start:start + batch_size].to(device), None
        return
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(torch.is_tensor(t) for t in data):
        data = TensorLoader(*data, batch_size=batch_size, device=device)
    for batch in data:
        batch = _move(batch, device)
        yield batch[0], (batch[1] if len(batch) > 1 else None)


@torch.no_grad()
def evaluate(model: nn.Module, data, loss="cross_entropy", device=None, fast: bool = True) -> dict:
    """Mean loss and accuracy (None for regression) of `model` on `data`, in evaluation mode."""
    device = get_device(device) if device is not None else _model_device(model)
    loss_fn = _resolve_loss(loss)
    amp_dtype = _amp_dtype(device, fast)
    was_training = model.training
    model.eval()
    total_loss, correct, count, classification = 0.0, 0, 0, False
    try:
        for x, y in _batches(data, device):
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                output = model(x)
                total_loss += loss_fn(output, y).float() * len(y)
            if _is_classification(output, y):
                classification = True
                correct += (output.argmax(1) == y).sum()
            count += len(y)
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("evaluate() got no data: the loader or tensors are empty.")
    mean_loss = float(total_loss) / count
    return {"loss": mean_loss, "acc": float(correct) / count if classification else None}


@torch.no_grad()
def predict(model: nn.Module, data, device=None) -> torch.Tensor:
    """The model's outputs (e.g. logits) for every example in `data`, concatenated, on the CPU."""
    device = get_device(device) if device is not None else _model_device(model)
    was_training = model.training
    model.eval()
    try:
        outputs = [model(x).float().cpu() for x, _ in _batches(data, device)]
    finally:
        model.train(was_training)
    return torch.cat(outputs)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of rows whose largest logit is the label."""
    return (logits.argmax(dim=1) == labels).float().mean().item()


__all__ = ["History", "TrainingRun", "fit", "evaluate", "predict", "accuracy", "save_atomic",
           "NonFiniteLossWarning", "check_output_matches_target"]
