"""fit(), evaluate() and predict(): the training loop of every lesson.

Lesson 00 writes this loop by hand in a dozen lines (forward, loss, backward, step); fit() is
the same loop plus what a course needs around it: a History, validation, progress, a live plot,
callbacks, resuming, clear errors, and the CUDA speed-ups switched on for you.

Read it top to bottom: fit() is the outline, train_one_epoch() runs the batches, and
train_step() is lesson 00's loop body. Pass your own step as fit(..., train_step=my_step) to change
what happens to each batch (later lessons do, to show their idea); everything else stays the same.
TrainingRun holds what the step and the callbacks may read or change.
"""

from __future__ import annotations

import contextlib
import copy
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .callbacks import Checkpoint, LivePlot, ProgressBar
from .data import TensorLoader
from .environment import get_device
from .history import History

LOSSES = {
    "cross_entropy": F.cross_entropy,
    "mse": F.mse_loss,
    "l1": F.l1_loss,
    "bce_with_logits": F.binary_cross_entropy_with_logits,
}
OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
              "rmsprop": torch.optim.RMSprop}
NAN_CHECK_EVERY = 25  # iterations between non-finite loss checks (each check waits for the GPU)

_last_history: History | None = None


class NonFiniteLossWarning(RuntimeWarning):
    """Training stopped because the loss became NaN or infinite."""


class TrainingInterrupted(KeyboardInterrupt):
    """You stopped fit() (Ctrl-C, or the notebook's stop button). Like any KeyboardInterrupt it
    stops the rest of the cell and a "Run All"; the History so far is `.history`, and also
    `last_history()`."""

    def __init__(self, message: str, history: History):
        super().__init__(message)
        self.history = history


def last_history() -> History | None:
    """The History of the most recent fit() in this process, finished or interrupted."""
    return _last_history


# ---------------------------------------------------------------------------------------------
# The state a step and the callbacks see
# ---------------------------------------------------------------------------------------------

class TrainingRun:
    """Everything a train_step or a callback may read or change while fit() runs."""

    def __init__(self, model, optimizer, loss_fn, train, val, device, epochs, callbacks,
                 history, amp_dtype, nan_guard):
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.train, self.val, self.device, self.epochs = train, val, device, epochs
        self.callbacks, self.history, self.nan_guard = callbacks, history, nan_guard
        self.amp_dtype = amp_dtype
        # float16 needs loss scaling; with any other precision the scaler passes everything through
        self.scaler = torch.amp.GradScaler("cuda" if device.type == "cuda" else "cpu",
                                           enabled=amp_dtype == torch.float16)
        self.epoch = 0          # index of the epoch running now (0-based)
        self.iteration = 0      # optimizer steps taken so far
        self.stop_reason: str | None = None
        self._unscaled = False  # float16 gradients already unscaled in this step?
        self._shapes_checked = False

    @property
    def batches_per_epoch(self) -> int:
        return len(self.train)

    def fire(self, event: str, *args) -> None:
        """Call `event` (e.g. 'on_epoch_end') on every callback, in order."""
        for callback in self.callbacks:
            getattr(callback, event)(self, *args)

    def autocast(self):
        """Mixed precision on CUDA (see mixed_precision_dtype); does nothing elsewhere."""
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss function, with the shape check on the first batch (a custom step gets it too)."""
        if not self._shapes_checked:
            check_output_matches_target(output, target, self.loss_fn)
            self._shapes_checked = True
        return self.loss_fn(output, target)

    def backward(self, loss: torch.Tensor) -> None:
        """loss.backward() (float16: on the scaled loss, so small gradients survive), then the
        callbacks that read gradients (clipping, diagnostics)."""
        self.scaler.scale(loss).backward()
        self.fire("on_after_backward")

    def step(self) -> None:
        """optimizer.step() (float16: skipped when a gradient overflowed, and the scale adapted)."""
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self._unscaled = False

    def unscale_gradients(self) -> None:
        """With float16 mixed precision, gradients are scaled; call this before reading them."""
        if not self._unscaled:
            self.scaler.unscale_(self.optimizer)
            self._unscaled = True

    def request_stop(self, reason: str) -> None:
        """Finish the current epoch's bookkeeping and stop (early stopping uses this)."""
        self.stop_reason = reason

    def snapshot(self) -> dict:
        """Copies of the weights and the optimizer's state, to go back to (the NaN guard does)."""
        return {"model": copy.deepcopy(self.model.state_dict()),
                "optimizer": copy.deepcopy(self.optimizer.state_dict())}

    def restore(self, snapshot: dict) -> None:
        self.model.load_state_dict(snapshot["model"])
        self.optimizer.load_state_dict(snapshot["optimizer"])

    def checkpoint_state(self) -> dict:
        """All that is needed to continue this run later exactly where it is now."""
        return {
            "format": 1,
            "epoch": len(self.history.epochs),
            "iteration": self.iteration,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "history": self.history.state_dict(),
            "callbacks": [[type(cb).__name__, cb.state_dict()] for cb in self.callbacks],
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "train_loader": self.train.state_dict() if isinstance(self.train, TensorLoader) else None,
        }

    def load_checkpoint_state(self, state: dict) -> None:
        """Continue from `state` (read with Checkpoint.read: every tensor on the CPU; the model
        and the optimizer copy theirs to the training device)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
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
        torch.set_rng_state(state["rng_cpu"])  # random-generator states must be CPU tensors
        if state["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        if state["train_loader"] is not None and isinstance(self.train, TensorLoader):
            self.train.load_state_dict(state["train_loader"])
        self.iteration = state["iteration"]


# ---------------------------------------------------------------------------------------------
# Inputs, losses, shapes, devices
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


def _loss_kind(loss_fn) -> str | None:
    """'classification' (labels), 'elementwise' (targets shaped like the output), or None."""
    if loss_fn in (F.cross_entropy, F.nll_loss) or isinstance(loss_fn, (nn.CrossEntropyLoss, nn.NLLLoss)):
        return "classification"
    elementwise_functions = (F.mse_loss, F.l1_loss, F.smooth_l1_loss, F.huber_loss,
                             F.binary_cross_entropy, F.binary_cross_entropy_with_logits)
    elementwise_modules = (nn.MSELoss, nn.L1Loss, nn.SmoothL1Loss, nn.HuberLoss, nn.BCELoss,
                           nn.BCEWithLogitsLoss)
    if loss_fn in elementwise_functions or isinstance(loss_fn, elementwise_modules):
        return "elementwise"
    return None


def check_output_matches_target(output: torch.Tensor, target: torch.Tensor, loss_fn) -> None:
    """Catch the classic shape bugs on the first batch, before they train a wrong model silently."""
    kind = _loss_kind(loss_fn)
    out, tgt = tuple(output.shape), tuple(target.shape)
    if kind == "classification" and not target.is_floating_point():
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
    elif kind == "elementwise" and out != tgt:
        raise ValueError(
            f"The model's output has shape {out} but the targets have shape {tgt}; the loss would "
            "broadcast them into a wrong answer without an error. Fix: make them equal, e.g. "
            "output.squeeze(-1) or targets.unsqueeze(-1).")


def _is_classification(output, target) -> bool:
    return output.dim() == 2 and output.shape[1] > 1 and not target.is_floating_point()


def _move(batch, device):
    return [t.to(device, non_blocking=True) if torch.is_tensor(t) else t for t in batch]


def mixed_precision_dtype(device: torch.device, fast: bool = True):
    """The autocast dtype fit(), evaluate() and predict() use: None (full float32) off CUDA or with
    fast=False; on CUDA bfloat16 where the GPU computes it natively (compute capability 8.0 and
    newer: A100, H100, RTX 30xx+), else float16 with loss scaling (e.g. Colab's T4, 7.5)."""
    if device.type != "cuda" or not fast:
        return None
    major, _ = torch.cuda.get_device_capability(device)
    return torch.bfloat16 if major >= 8 else torch.float16


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


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


# ---------------------------------------------------------------------------------------------
# fit: the outline
# ---------------------------------------------------------------------------------------------

def fit(model: nn.Module, train, val=None, *, epochs: int = 10, optimizer="sgd", lr: float | None = None,
        loss="cross_entropy", batch_size: int = 256, device="auto", callbacks=(), train_step=None,
        fast: bool = True, progress: bool = True, live_plot="auto", resume=None,
        nan_guard: bool = True, label: str | None = None) -> History:
    """Train `model` on `train` for `epochs` epochs and return a History.

    train / val: a TensorLoader, a torch DataLoader, or an (inputs, targets) tuple of tensors
        (then batched with `batch_size`, shuffled for training).
    optimizer: a torch.optim optimizer, or a name ('sgd', 'adam', 'adamw', 'rmsprop') used with `lr`.
    loss: 'cross_entropy' (default), 'mse', 'l1', 'bce_with_logits', a loss module such as
        nn.MSELoss(), or a function (output, target) -> scalar.
    device: 'auto' picks CUDA, then Apple MPS, then the CPU. On CUDA, fast=True turns on mixed
        precision (see mixed_precision_dtype), TF32 and cuDNN autotuning.
    callbacks: EarlyStopping, Checkpoint, LRScheduler, GradientClipping, ... (course_utils.callbacks).
    train_step: what one batch does, a function (run, x, y) -> (loss, output); default
        course_utils.train_step. Pass your own to change it.
    live_plot: 'auto' draws updating learning curves in Jupyter; True / False force it.
    resume: a checkpoint file written by Checkpoint; training continues from its last epoch.
    nan_guard: stop with a clear message when the loss becomes NaN or infinite, restoring the
        weights and optimizer state from the end of the last good epoch.

    Ctrl-C (or the notebook's stop button) stops training cleanly and raises TrainingInterrupted,
    so a "Run All" stops too; the History so far is in last_history().
    """
    global _last_history
    run = _start_run(model, train, val, epochs, optimizer, lr, loss, batch_size, device,
                     callbacks, fast, progress, live_plot, nan_guard, label)
    _last_history = run.history
    run.fire("on_train_begin")
    interrupted = False
    try:
        start_epoch = _resume(run, resume, callbacks)
        with _speedups(run.device, fast):
            for epoch in range(start_epoch, epochs):
                run.epoch = epoch
                good_state = run.snapshot() if nan_guard else None
                run.fire("on_epoch_begin")
                record = train_one_epoch(run, train_step or default_train_step)
                if record is None:                      # the loss became NaN or infinite
                    _stop_on_non_finite(run, good_state)
                    break
                if run.val is not None:
                    scores = evaluate(run.model, run.val, loss=run.loss_fn, device=run.device, fast=fast)
                    record["val_loss"], record["val_acc"] = scores["loss"], scores["acc"]
                run.history.epochs.append(record)
                run.fire("on_epoch_end", record)
                if run.stop_reason:
                    break
    except KeyboardInterrupt:
        run.stop_reason, interrupted = "interrupted", True
    finally:
        run.history.stop_reason = run.stop_reason
        run.fire("on_train_end")
    if interrupted:
        done = len(run.history.epochs)
        raise TrainingInterrupted(
            f"Training stopped during epoch {run.epoch + 1} of {epochs}. The model keeps the weights "
            f"it has now (unless a callback such as EarlyStopping restored better ones); the History "
            f"of the {done} completed epoch(s) is cu.last_history().",
            run.history) from None
    return run.history


def _start_run(model, train, val, epochs, optimizer, lr, loss, batch_size, device, callbacks,
               fast, progress, live_plot, nan_guard, label) -> TrainingRun:
    """Check the arguments and build the TrainingRun: data on the device, optimizer, callbacks."""
    if not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be a whole number >= 0, got {epochs!r}.")
    device = get_device(device)
    model.to(device)
    train = _as_loader(train, batch_size, True, device)
    val = _as_loader(val, batch_size, False, device)
    if len(train) == 0:
        raise ValueError("The training data has no batches: it is empty, or smaller than "
                         "batch_size with drop_last=True.")
    callbacks = list(callbacks)
    if live_plot == "auto":
        live_plot = LivePlot.available()
    if live_plot and not any(isinstance(cb, LivePlot) for cb in callbacks):
        callbacks.append(LivePlot())
    if progress:
        callbacks.append(ProgressBar())
    callbacks.sort(key=lambda cb: getattr(cb, "order", 0))  # checkpoints last, after schedulers
    history = History(label=label, iterations_per_epoch=len(train))
    return TrainingRun(model, _resolve_optimizer(model, optimizer, lr), _resolve_loss(loss), train,
                       val, device, epochs, callbacks, history, mixed_precision_dtype(device, fast),
                       nan_guard)


def _resume(run: TrainingRun, resume, callbacks) -> int:
    """Load the checkpoint `resume` names, if there is one; return the epoch to start from."""
    if resume is None:
        return 0
    if resume is True:
        found = [cb for cb in callbacks if isinstance(cb, Checkpoint)]
        if not found:
            raise ValueError("resume=True needs a Checkpoint callback; or pass resume='path/to/file.pt'.")
        resume = found[0].path
    resume = Path(resume)
    if not resume.exists():
        print(f"No checkpoint at {resume} yet: starting from scratch.")
        return 0
    run.load_checkpoint_state(Checkpoint.read(resume))
    done = len(run.history.epochs)
    print(f"Resumed from {resume}: {done} of {run.epochs} epochs already done.")
    return done


def train_one_epoch(run: TrainingRun, step) -> dict | None:
    """Run `step` on every batch of run.train; return the epoch's record (None if the loss
    became NaN or infinite and run.nan_guard is on)."""
    run.model.train()
    started = time.perf_counter()
    batch_losses, batch_sizes, correct = [], [], None
    try:
        for batch in run.train:
            x, y = batch if isinstance(run.train, TensorLoader) else _move(batch, run.device)
            loss, output = step(run, x, y)
            batch_losses.append(loss.detach())
            batch_sizes.append(len(y))
            if _is_classification(output, y):
                hits = (output.detach().argmax(1) == y).sum()
                correct = hits if correct is None else correct + hits
            run.iteration += 1
            run.fire("on_batch_end", loss)
            if run.nan_guard and run.iteration % NAN_CHECK_EVERY == 0:
                if not torch.isfinite(torch.stack(batch_losses[-NAN_CHECK_EVERY:])).all():
                    break
            if run.stop_reason:
                break
    finally:  # also when interrupted: the History keeps every loss computed
        losses = torch.stack(batch_losses).float().cpu() if batch_losses else torch.zeros(0)
        run.history.iteration_loss.extend(losses.tolist())
    seconds = time.perf_counter() - started
    if run.nan_guard and not torch.isfinite(losses).all():
        return None
    seen = sum(batch_sizes)
    weights = torch.tensor(batch_sizes, dtype=torch.float32)
    return {
        "epoch": run.epoch + 1,
        "train_loss": float((losses * weights).sum() / seen),
        "train_acc": float(correct) / seen if correct is not None else None,
        "val_loss": None,
        "val_acc": None,
        "lr": run.optimizer.param_groups[0]["lr"],
        "seconds": seconds,
        "examples_per_s": seen / seconds,
    }


def train_step(run: TrainingRun, x: torch.Tensor, y: torch.Tensor):
    """One optimizer step on one batch: forward, loss, backward, update. Returns (loss, output).

    This is lesson 00's hand-written loop body. To change what a step does, copy this function,
    edit it, and pass it as fit(..., train_step=my_step).
    """
    with run.autocast():                  # mixed precision on CUDA, nothing elsewhere
        output = run.model(x)
        loss = run.loss(output, y)        # the loss function; shapes checked on the first batch
    run.optimizer.zero_grad(set_to_none=True)
    run.backward(loss)                    # loss.backward(), then clipping and diagnostics
    run.step()                            # optimizer.step()
    return loss, output


default_train_step = train_step  # what fit() uses when its train_step argument is None


def _stop_on_non_finite(run: TrainingRun, good_state) -> None:
    losses = torch.tensor(run.history.iteration_loss)  # every earlier epoch was finite
    bad = int((~torch.isfinite(losses)).nonzero()[0])
    iteration, value = bad + 1, losses[bad].item()
    run.restore(good_state)
    run.stop_reason = "non-finite loss"
    done = len(run.history.epochs)
    kept = f"the end of epoch {done}" if done else "before training started"
    message = (
        f"The loss became {value} at iteration {iteration} (epoch {run.epoch + 1}); training stopped "
        f"and the model keeps its weights and optimizer state from {kept}. Usual fixes: a smaller "
        f"learning rate (lr is {run.optimizer.param_groups[0]['lr']:g} now), gradient clipping "
        "(callbacks=[GradientClipping(1.0)]), or checking the inputs for NaN or huge values.")
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


@contextlib.contextmanager
def _evaluation_mode(model: nn.Module):
    """model.eval() and no gradients inside the block; the model's mode restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _outputs(model: nn.Module, data, device, fast: bool):
    """(float32 output, target) for each batch, at the precision fit() trains with, so evaluate()
    and predict() see the same numbers. Call it inside _evaluation_mode."""
    amp_dtype = mixed_precision_dtype(device, fast)
    for x, y in _batches(data, device):
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            output = model(x)
        yield output.float(), y


def evaluate(model: nn.Module, data, loss="cross_entropy", device=None, fast: bool = True) -> dict:
    """Mean loss and accuracy (None for regression) of `model` on `data`, in evaluation mode."""
    device = get_device(device) if device is not None else _model_device(model)
    loss_fn = _resolve_loss(loss)
    total_loss, correct, count, classification = 0.0, 0, 0, False
    with _evaluation_mode(model):
        for output, y in _outputs(model, data, device, fast):
            total_loss += loss_fn(output, y) * len(y)
            if _is_classification(output, y):
                classification = True
                correct += (output.argmax(1) == y).sum()
            count += len(y)
    if count == 0:
        raise ValueError("evaluate() got no data: the loader or tensors are empty.")
    return {"loss": float(total_loss) / count, "acc": float(correct) / count if classification else None}


def predict(model: nn.Module, data, device=None, fast: bool = True) -> torch.Tensor:
    """The model's outputs (e.g. logits) for every example in `data`, concatenated, on the CPU,
    computed exactly as evaluate() computes them."""
    device = get_device(device) if device is not None else _model_device(model)
    with _evaluation_mode(model):
        return torch.cat([output.cpu() for output, _ in _outputs(model, data, device, fast)])


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of rows whose largest logit is the label."""
    return (logits.argmax(dim=1) == labels).float().mean().item()


__all__ = ["History", "TrainingRun", "TrainingInterrupted", "fit", "train_step", "train_one_epoch",
           "evaluate", "predict", "accuracy", "last_history", "mixed_precision_dtype",
           "NonFiniteLossWarning", "check_output_matches_target"]
