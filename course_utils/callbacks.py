"""Callbacks: small objects fit() calls at fixed points, to add behaviour without changing the loop.

    fit(model, train, val, epochs=30, lr=0.1,
        callbacks=[EarlyStopping(patience=3), Checkpoint("run.pt"), LRScheduler(one_cycle(0.5), per="batch")])

Write your own by subclassing Callback and overriding the hooks you need (lesson 04 records
gradient norms this way).
"""

from __future__ import annotations

import copy
import io
import os
import time
from pathlib import Path

import torch

from .files import save_atomic


class Callback:
    """Hooks fit() calls; `run` is the TrainingRun (model, optimizer, history, epoch, ...)."""

    order = 0  # callbacks run in increasing order; Checkpoint runs last

    def on_train_begin(self, run): ...
    def on_epoch_begin(self, run): ...
    def on_after_backward(self, run): ...   # gradients exist, the step has not happened
    def on_batch_end(self, run, loss): ...  # loss: the batch's loss tensor (reading it waits for the GPU)
    def on_epoch_end(self, run, record): ...
    def on_train_end(self, run): ...

    def state_dict(self) -> dict:
        """What must be saved in a checkpoint to resume this callback exactly."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def _better(value, best, mode, min_delta):
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


def _monitored(record: dict, monitor: str, who: str):
    if monitor not in record:
        raise ValueError(f"{who} monitors {monitor!r}, which fit() does not record. "
                         f"Choose one of {sorted(k for k in record if k != 'epoch')}.")
    value = record[monitor]
    if value is None:
        raise ValueError(f"{who} monitors {monitor!r}, but it has no value: pass validation data "
                         "to fit(model, train, val, ...), or monitor a training metric.")
    return value


class EarlyStopping(Callback):
    """Stop when `monitor` has not improved for `patience` epochs, and go back to the best weights.

    Lesson 03: early stopping is regularization by choosing *when* to stop. verbose=False keeps
    the restore quiet, for sweeps of many runs (lesson 02).
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.0,
                 restore_best_weights: bool = True, verbose: bool = True):
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        self.verbose = verbose
        self.mode = "min" if "loss" in monitor else "max"
        self.restore_best_weights = restore_best_weights
        self.best, self.best_epoch, self.wait, self.best_weights = None, None, 0, None

    def on_epoch_end(self, run, record):
        value = _monitored(record, self.monitor, "EarlyStopping")
        if _better(value, self.best, self.mode, self.min_delta):
            self.best, self.best_epoch, self.wait = value, record["epoch"], 0
            if self.restore_best_weights:
                self.best_weights = copy.deepcopy(run.model.state_dict())
        else:
            self.wait += 1
            if self.wait >= self.patience:
                run.request_stop(f"early stopping: {self.monitor} did not improve for "
                                 f"{self.patience} epochs")

    def on_train_end(self, run):
        if self.restore_best_weights and self.best_weights is not None and run.history.epochs:
            if self.best_epoch != run.history.epochs[-1]["epoch"]:
                run.model.load_state_dict(self.best_weights)
                if self.verbose:
                    print(f"EarlyStopping: restored the weights of epoch {self.best_epoch} "
                          f"({self.monitor} = {self.best:.4f}).")

    def state_dict(self):
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait,
                "best_weights": self.best_weights}

    def load_state_dict(self, state):
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.wait, self.best_weights = state["wait"], state["best_weights"]


class Checkpoint(Callback):
    """Save everything needed to resume (weights, optimizer, schedules, history, random state)
    to `path` every `every` epochs, atomically: an interruption never leaves a broken file.

    Resume with fit(..., resume="path") (or resume=True). With `monitor`, the best epoch's
    weights are also kept in `<path stem>.best.pt` (lesson 03: checkpoint selection).
    """

    order = 100

    def __init__(self, path, every: int = 1, monitor: str | None = None):
        self.path, self.every, self.monitor = Path(path), every, monitor
        self.best_path = self.path.with_name(self.path.stem + ".best.pt")
        self.mode = "min" if monitor and "loss" in monitor else "max"
        self.best = None

    def on_epoch_end(self, run, record):
        if self.monitor is not None:
            value = _monitored(record, self.monitor, "Checkpoint")
            if _better(value, self.best, self.mode, 0.0):
                self.best = value
                save_atomic({"epoch": record["epoch"], self.monitor: value,
                             "model": run.model.state_dict()}, self.best_path)
        last = record["epoch"] == run.epochs or run.stop_reason is not None
        if record["epoch"] % self.every == 0 or last:
            save_atomic(run.checkpoint_state(), self.path)

    def state_dict(self):
        return {"best": self.best}

    def load_state_dict(self, state):
        self.best = state["best"]

    @staticmethod
    def read(path) -> dict:
        """A checkpoint's contents with every tensor on the CPU, whatever device wrote it.

        Loading straight onto a GPU (map_location='cuda') would put the saved random-generator
        states there too, and torch.set_rng_state only takes CPU tensors; model.load_state_dict and
        optimizer.load_state_dict copy their tensors to the device of the parameters anyway.
        """
        return torch.load(path, map_location="cpu", weights_only=True)

    @staticmethod
    def load_weights(model, path) -> dict:
        """Put the weights saved in `path` (a checkpoint or a .best.pt file) into `model`."""
        state = Checkpoint.read(path)
        model.load_state_dict(state["model"])
        return state


class LRScheduler(Callback):
    """Step a learning-rate schedule per batch or per epoch.

    `schedule` is a torch scheduler built on fit()'s optimizer, or a function
    (optimizer, total_steps) -> scheduler, such as one_cycle(max_lr), so it can be built on the
    optimizer fit() creates. ReduceLROnPlateau is stepped with val_loss (else train_loss).
    """

    def __init__(self, schedule, per: str = "epoch"):
        if per not in ("batch", "epoch"):
            raise ValueError(f"per must be 'batch' or 'epoch', got {per!r}.")
        self.schedule, self.per, self.scheduler = schedule, per, None
        self.lrs: list[float] = []

    def on_train_begin(self, run):
        if isinstance(self.schedule, (torch.optim.lr_scheduler.LRScheduler,
                                      torch.optim.lr_scheduler.ReduceLROnPlateau)):
            self.scheduler = self.schedule
            if self.scheduler.optimizer is not run.optimizer:
                raise ValueError("The scheduler was built on another optimizer than the one fit() "
                                 "trains with. Pass that optimizer to fit(optimizer=...), or give a "
                                 "function (optimizer, total_steps) -> scheduler instead.")
        else:
            steps = run.epochs * (run.batches_per_epoch if self.per == "batch" else 1)
            self.scheduler = self.schedule(run.optimizer, steps)

    def on_batch_end(self, run, loss):
        if self.per == "batch":
            self.lrs.append(run.optimizer.param_groups[0]["lr"])
            self.scheduler.step()

    def on_epoch_end(self, run, record):
        if self.per == "epoch":
            self.lrs.append(run.optimizer.param_groups[0]["lr"])
            if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                metric = record["val_loss"] if record["val_loss"] is not None else record["train_loss"]
                self.scheduler.step(metric)
            else:
                self.scheduler.step()

    def state_dict(self):
        return {"scheduler": self.scheduler.state_dict(), "lrs": list(self.lrs)}

    def load_state_dict(self, state):
        self.scheduler.load_state_dict(state["scheduler"])
        self.lrs = list(state["lrs"])


def one_cycle(max_lr: float, **kwargs):
    """A OneCycleLR factory for LRScheduler(..., per='batch'): warm up, then anneal (lesson 07)."""
    def build(optimizer, total_steps):
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total_steps,
                                                   **kwargs)
    return build


class GradientClipping(Callback):
    """Rescale the gradients so their global norm is at most `max_norm` (lesson 04: exploding
    gradients). `norms` keeps the norm before clipping, one value per epoch (the mean)."""

    def __init__(self, max_norm: float = 1.0):
        self.max_norm = max_norm
        self.norms: list[float] = []
        self._epoch_norms: list[torch.Tensor] = []

    def on_after_backward(self, run):
        run.unscale_gradients()
        norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), self.max_norm)
        self._epoch_norms.append(norm.detach())

    def on_epoch_end(self, run, record):
        if self._epoch_norms:
            self.norms.append(torch.stack(self._epoch_norms).float().mean().item())
        self._epoch_norms = []


class ProgressBar(Callback):
    """One tqdm bar over all the batches of the run, showing the last epoch's losses."""

    def __init__(self):
        self.bar = None

    def on_epoch_begin(self, run):
        if self.bar is None:
            from tqdm.auto import tqdm

            total = run.epochs * run.batches_per_epoch
            self.bar = tqdm(total=total, initial=run.epoch * run.batches_per_epoch, unit="batch",
                            desc=run.history.label or "training", mininterval=0.5, leave=True)
        self.bar.set_description(f"{run.history.label or 'epoch'} {run.epoch + 1}/{run.epochs}")

    def on_batch_end(self, run, loss):
        self.bar.update(1)

    def on_epoch_end(self, run, record):
        shown = {k: f"{record[k]:.4f}" for k in ("train_loss", "val_loss", "val_acc")
                 if record[k] is not None}
        self.bar.set_postfix(shown, refresh=False)

    def on_train_end(self, run):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _in_notebook_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


def headless() -> bool:
    """True under `course run` and the test suite (COURSE_HEADLESS=1): nobody watches live."""
    return os.environ.get("COURSE_HEADLESS", "") not in ("", "0")


class LivePlot(Callback):
    """Learning curves that redraw in place while training runs (JupyterLab, VS Code, Colab).

    The figure is one display that is updated, not a new image per epoch. Headless
    (COURSE_HEADLESS=1) it draws once, when training ends.
    """

    def __init__(self, every_seconds: float = 1.0):
        self.every_seconds = every_seconds
        self.handle, self.figure, self.pending, self.last_draw = None, None, [], 0.0
        self.draws = 0

    @staticmethod
    def available() -> bool:
        return _in_notebook_kernel()

    def _image(self, history):
        from IPython.display import Image

        from .plots import plot_history

        from matplotlib.figure import Figure

        losses = history.iteration_loss + [float(t) for t in self.pending]
        if self.figure is None:
            self.figure = Figure()  # not pyplot's: Jupyter must not show it again at cell end
        self.figure = plot_history(history, iteration_loss=losses, figure=self.figure)
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
        self.draws += 1
        self.last_draw = time.monotonic()
        return Image(data=buffer.getvalue(), format="png")

    def _draw(self, run):
        from IPython.display import display

        image = self._image(run.history)
        if self.handle is None:
            self.handle = display(image, display_id=True)
        else:
            self.handle.update(image)

    def on_epoch_begin(self, run):
        self.pending = []

    def on_batch_end(self, run, loss):
        if headless():
            return
        self.pending.append(loss.detach())
        if time.monotonic() - self.last_draw >= self.every_seconds:
            self._draw(run)

    def on_epoch_end(self, run, record):
        self.pending = []
        if not headless():
            self._draw(run)

    def on_train_end(self, run):
        self.pending = []
        if run.history.iteration_loss:
            self._draw(run)
        self.figure = None
