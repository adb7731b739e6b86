"""course_utils: the companion package of the course.

    from course_utils import fashion_mnist_loaders, lenet, fit
    train, val, test = fashion_mnist_loaders()
    history = fit(lenet(), train, val, epochs=5, lr=0.9)
    history.plot()

Modules, one idea each, for the lessons: data (datasets, splits, the on-device loader), models,
training (fit, train_step, evaluate, predict), history (what fit measured), callbacks, diagnostics
(inside a training run: dead units, gradients, update sizes), learning_rates (the range test),
tuning (lesson 08: a fast tuning task, its Optuna objective, worker processes), transfer
(lesson 09: source and target tasks, adapting a pretrained CNN, linear probes), playbook
(lesson 10: checks that find a training script's bugs) with broken_script (its bugs), plots,
environment (devices, seeds), report (versions, device, dataset), files (atomic writes) and
cpu_threads (how PyTorch's CPU threads wait). Instructor tooling, apart: notebooks (running the
course headless), the grading package (exercises, the sandbox, the judge), cli (the `course`
command).
"""

from .cpu_threads import calm_openmp_spinning

calm_openmp_spinning()  # before torch is imported, where it still can be: see cpu_threads.py

from .callbacks import (Callback, Checkpoint, EarlyStopping, GradientClipping, LivePlot,
                        LRScheduler, one_cycle)
from .diagnostics import Diagnostics, layer_gradient_norms
from .data import (FASHION_MNIST_CLASSES, DatasetError, FashionMNIST, Standardize, TensorLoader,
                   fashion_mnist_loaders, load_fashion_mnist, make_moons,
                   make_polynomial_regression, make_spirals, normalization_stats, train_val_split)
from .environment import get_device, seed_everything
from .learning_rates import LRFindResult, lr_find
from .models import count_parameters, lenet, mlp
from .report import environment_report, print_environment_report
from .plots import (compare_histories, plot_class_balance, plot_confusion_matrix,
                    plot_decision_boundary, plot_history, show_images)
from .history import History
from .training import (NonFiniteLossWarning, TrainingInterrupted, TrainingRun, accuracy, evaluate,
                       fit, last_history, predict, train_step)

__version__ = "0.1.0"

__all__ = [
    "Callback", "Checkpoint", "EarlyStopping", "GradientClipping", "LivePlot", "LRScheduler",
    "one_cycle", "Diagnostics", "layer_gradient_norms", "FASHION_MNIST_CLASSES", "DatasetError", "FashionMNIST", "Standardize",
    "TensorLoader", "fashion_mnist_loaders", "load_fashion_mnist", "make_moons",
    "make_polynomial_regression", "make_spirals", "normalization_stats", "train_val_split",
    "LRFindResult", "lr_find",
    "environment_report", "get_device", "print_environment_report", "seed_everything",
    "count_parameters", "lenet", "mlp", "compare_histories", "plot_class_balance",
    "plot_confusion_matrix", "plot_decision_boundary", "plot_history", "show_images", "History",
    "NonFiniteLossWarning", "TrainingInterrupted", "TrainingRun", "accuracy", "evaluate", "fit",
    "last_history", "predict", "train_step",
]
