"""Hyperparameter tuning (lesson 08): a small task that trains in a fraction of a second, the
Optuna objective the lesson writes, and a worker process that adds trials to a shared study.

    python -m course_utils.tuning --storage study.journal --study mlp --trials 20

Several workers started with the same storage and study name fill one study together: on one
machine through a journal file (or SQLite), across machines through a database server such as
PostgreSQL (`--storage postgresql://user@host/db`).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .models import mlp
from .training import accuracy


@dataclass
class TuningTask:
    """Flattened, standardized images: a training set to fit, a validation set to tune on and
    the full test set to report on."""
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    mean: float  # of the training part, on the 0..1 scale: x = (pixel / 255 - mean) / std
    std: float
    unused: np.ndarray | None = None  # training-set indices in neither part: fresh data to re-score on


def small_task(n_train: int = 4000, n_val: int = 2000, seed: int = 0, device="cpu",
               data_dir=None) -> TuningTask:
    """A stratified random `n_train` + `n_val` images from Fashion-MNIST's training set, and its
    10,000 test images, standardized with the training part's mean and std, on `device`."""
    from sklearn.model_selection import train_test_split

    from .data import load_fashion_mnist

    data = load_fashion_mnist(data_dir)
    train_idx, val_idx = train_test_split(torch.arange(len(data.train_labels)).numpy(),
                                          train_size=n_train, test_size=n_val, random_state=seed,
                                          stratify=data.train_labels.numpy())
    x = data.train_images.float().div(255).flatten(1)
    x_train, x_val = x[train_idx], x[val_idx]
    mean, std = x_train.mean(), x_train.std()
    x_test = data.test_images.float().div(255).flatten(1)
    y = data.train_labels
    tensors = [(x_train - mean) / std, y[train_idx], (x_val - mean) / std, y[val_idx],
               (x_test - mean) / std, data.test_labels]
    unused = np.setdiff1d(np.arange(len(y)), np.concatenate([train_idx, val_idx]))
    return TuningTask(*[t.to(device) for t in tensors], mean.item(), std.item(), unused)


def accuracy_on(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """The model's accuracy on (x, y), without building a graph."""
    with torch.no_grad():
        return accuracy(model(x), y)


def train_mlp(task: TuningTask, lr: float, momentum: float = 0.9, hidden=(128,),
              weight_decay: float = 0.0, optimizer: str = "sgd", steps: int = 150,
              batch_size: int = 100, seed: int = 0, report=None, reports: int = 5):
    """course_utils.mlp with ReLU hidden layers `hidden`, trained for `steps` minibatches by SGD with
    momentum, or by Adam (optimizer="adam") with `momentum` as its beta1.

    Every steps // reports steps it measures validation accuracy and calls report(k, accuracy)
    with k = 1..reports; if that returns True training stops there (how a pruner ends a trial).
    Returns (model, validation accuracy at the end).
    """
    torch.manual_seed(seed)
    model = mlp(task.x_train.shape[1], hidden=tuple(hidden)).to(task.x_train.device)
    if optimizer == "sgd":
        step_rule = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                                    weight_decay=weight_decay)
    elif optimizer == "adam":
        step_rule = torch.optim.Adam(model.parameters(), lr=lr, betas=(momentum, 0.999),
                                     weight_decay=weight_decay)
    else:
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}.")
    draw = torch.Generator().manual_seed(seed)
    every = max(1, steps // reports)
    accuracy = float("nan")
    for step in range(1, steps + 1):
        batch = torch.randint(0, len(task.y_train), (batch_size,), generator=draw)
        batch = batch.to(task.x_train.device)
        loss = F.cross_entropy(model(task.x_train[batch]), task.y_train[batch])
        step_rule.zero_grad()
        loss.backward()
        step_rule.step()
        if not torch.isfinite(loss):
            return model, 0.1  # diverged: scored as chance, so a search can still rank it
        if step % every == 0 or step == steps:
            accuracy = accuracy_on(model, task.x_val, task.y_val)
            if report is not None and step % every == 0 and report(step // every, accuracy):
                break
    return model, accuracy


def objective(trial, task: TuningTask, steps: int = 150) -> float:
    """Validation accuracy of one trial: learning rate and 1 - momentum on a log scale, weight
    decay on a log scale, width from a list. Reports as it trains, so a pruner can stop it."""
    import optuna

    params = dict(lr=trial.suggest_float("lr", 1e-4, 1.0, log=True),
                  momentum=1 - trial.suggest_float("one_minus_momentum", 1e-3, 0.5, log=True),
                  weight_decay=trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True),
                  hidden=(trial.suggest_categorical("hidden", [32, 64, 128, 256]),))

    def report(k, accuracy):
        trial.report(accuracy, k)
        return trial.should_prune()

    _, accuracy = train_mlp(task, steps=steps, report=report, **params)
    if trial.should_prune():
        raise optuna.TrialPruned()
    return accuracy


def open_storage(storage: str):
    """A database URL (sqlite:///..., postgresql://...) as it is; any other string is a journal
    file, the safest storage for several processes on one machine."""
    if "://" in storage:
        return storage
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    return JournalStorage(JournalFileBackend(storage))


def wait_for_workers(study, n_workers: int, timeout: float = 300.0) -> None:
    """Rendezvous through the study's own storage: mark this process ready, then wait until
    `n_workers` processes are, so that start-up times (importing PyTorch, loading the data) do
    not decide who runs what. Works wherever the storage is shared, one machine or many."""
    import time
    study.set_user_attr(f"ready-{os.uname().nodename}-{os.getpid()}", time.time())
    deadline = time.monotonic() + timeout
    while sum(key.startswith("ready-") for key in study.user_attrs) < n_workers:
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:.0f} s for {n_workers} workers on study "
                               f"{study.study_name!r}; start them all with the same --wait-for, "
                               f"or drop --wait-for to start at once")
        time.sleep(0.05)


def run_worker(storage: str, study_name: str, n_trials: int, threads: int = 1,
               prune: bool = True, wait_for: int = 1) -> int:
    """Add `n_trials` trials to an existing study (trials queued with study.enqueue_trial come
    first); each trial records which process ran it. With `wait_for` > 1 the worker starts its
    trials only once that many workers are ready. Returns this process's id."""
    import optuna

    torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0) if prune else None
    study = optuna.load_study(study_name=study_name, storage=open_storage(storage),
                              pruner=pruner or optuna.pruners.NopPruner())
    task = small_task()
    if wait_for > 1:
        wait_for_workers(study, wait_for)

    def tagged(trial):
        trial.set_user_attr("worker", os.getpid())
        return objective(trial, task)

    study.optimize(tagged, n_trials=n_trials)
    return os.getpid()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m course_utils.tuning", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storage", required=True, help="journal file path or database URL")
    parser.add_argument("--study", required=True, help="name of a study created beforehand")
    parser.add_argument("--trials", type=int, default=10, help="trials this worker adds")
    parser.add_argument("--threads", type=int, default=1, help="PyTorch CPU threads per worker")
    parser.add_argument("--no-prune", action="store_true", help="run every trial to the end")
    parser.add_argument("--wait-for", type=int, default=1, metavar="N",
                        help="start trials only when N workers on this study are ready")
    args = parser.parse_args(argv)
    try:
        run_worker(args.storage, args.study, args.trials, args.threads, prune=not args.no_prune,
                   wait_for=args.wait_for)
    except KeyError as err:  # optuna.load_study on a name that does not exist
        parser.exit(2, f"No study named {args.study!r} in {args.storage}: create it first with "
                       f"optuna.create_study(study_name={args.study!r}, storage=..., "
                       f"direction='maximize'). ({err})\n")


if __name__ == "__main__":
    main()
