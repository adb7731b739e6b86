"""Plots the lessons share: learning curves, image grids, confusion matrices, decision boundaries.

Each function returns the matplotlib Figure. In a notebook, end the line with `;` or assign the
result (`fig = show_images(...)`) so Jupyter shows the figure once.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

TRAIN_STYLE = dict(linestyle="--", marker="o", markersize=3)
VAL_STYLE = dict(linestyle="-", marker="o", markersize=3)


def _as_list(histories, labels):
    if not isinstance(histories, (list, tuple)):
        histories = [histories]
    if labels is None:
        labels = [h.label or (f"run {i + 1}" if len(histories) > 1 else None)
                  for i, h in enumerate(histories)]
    return list(histories), list(labels)


def plot_history(histories, labels=None, iteration_loss=None, figure: Figure | None = None,
                 log_loss: bool = False) -> Figure:
    """Learning curves of one History (or a list, to compare runs).

    Left: the loss, per iteration (thin) and per epoch (train dashed, validation solid).
    Right: train and validation accuracy, when the task is classification.
    `figure` redraws into an existing Figure (the live plot does this).
    """
    histories, labels = _as_list(histories, labels)
    has_acc = any(r["train_acc"] is not None for h in histories for r in h.epochs)
    if figure is None:
        figure, _ = plt.subplots(1, 2 if has_acc else 1, figsize=(11 if has_acc else 6, 3.8))
    else:
        figure.clear()
        figure.subplots(1, 2 if has_acc else 1)
        figure.set_size_inches(11 if has_acc else 6, 3.8)
    axes = figure.axes
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (history, label) in enumerate(zip(histories, labels)):
        color = colors[i % len(colors)]
        prefix = f"{label}: " if label else ""
        losses = iteration_loss if (iteration_loss is not None and i == 0) else history.iteration_loss
        per_epoch = history.iterations_per_epoch or max(len(losses), 1)
        if losses and len(histories) == 1:
            x = (np.arange(len(losses)) + 1) / per_epoch
            axes[0].plot(x, losses, color=color, alpha=0.3, linewidth=0.8,
                         label=f"{prefix}train (per iteration)")
        epochs = history["epoch"] if history.epochs else []
        if epochs:
            axes[0].plot(epochs, history["train_loss"], color=color, label=f"{prefix}train",
                         **TRAIN_STYLE)
            if history.epochs[0]["val_loss"] is not None:
                axes[0].plot(epochs, history["val_loss"], color=color, label=f"{prefix}validation",
                             **VAL_STYLE)
            if has_acc and history.epochs[0]["train_acc"] is not None:
                axes[1].plot(epochs, history["train_acc"], color=color, label=f"{prefix}train",
                             **TRAIN_STYLE)
                if history.epochs[0]["val_acc"] is not None:
                    axes[1].plot(epochs, history["val_acc"], color=color,
                                 label=f"{prefix}validation", **VAL_STYLE)
    axes[0].set(xlabel="epoch", ylabel="loss", title="Loss")
    if log_loss:
        axes[0].set_yscale("log")
    if has_acc:
        axes[1].set(xlabel="epoch", ylabel="accuracy", title="Accuracy")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    figure.tight_layout()
    return figure


def compare_histories(histories, labels=None, **kwargs) -> Figure:
    """Several runs on one set of axes (per-epoch curves only, so the lines stay readable)."""
    return plot_history(list(histories), labels=labels, **kwargs)


def _to_display(image: torch.Tensor) -> np.ndarray:
    image = image.detach().cpu()
    if image.dim() == 3 and image.shape[0] in (1, 3):  # channels first
        image = image.permute(1, 2, 0)
    image = image.float()
    if image.max() > 1.5:  # uint8 scale
        image = image / 255
    if image.min() < 0:   # normalized: stretch back to 0..1 for viewing
        image = (image - image.min()) / (image.max() - image.min() + 1e-8)
    return image.squeeze(-1).numpy() if image.dim() == 3 and image.shape[-1] == 1 else image.numpy()


def show_images(images, labels=None, predictions=None, classes=None, ncols: int = 10,
                size: float = 1.2, title: str | None = None) -> Figure:
    """A grid of images with their labels; with `predictions`, wrong ones are titled in red."""
    images = torch.as_tensor(images)
    n = len(images)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * size, nrows * size * 1.15), squeeze=False)
    name = (lambda k: classes[int(k)]) if classes is not None else (lambda k: str(int(k)))
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        shown = _to_display(images[i])
        ax.imshow(shown, cmap="gray" if shown.ndim == 2 else None)
        if predictions is not None:
            right = labels is None or int(predictions[i]) == int(labels[i])
            text = name(predictions[i]) if right else f"{name(predictions[i])}\n(true: {name(labels[i])})"
            ax.set_title(text, fontsize=7, color="black" if right else "crimson")
        elif labels is not None:
            ax.set_title(name(labels[i]), fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_confusion_matrix(labels, predictions, classes=None, normalize: bool = True) -> Figure:
    """Rows: true class; columns: predicted class. Normalized rows show each class's recall."""
    from sklearn.metrics import confusion_matrix

    labels, predictions = np.asarray(labels), np.asarray(predictions)
    n_classes = len(classes) if classes is not None else int(max(labels.max(), predictions.max())) + 1
    counts = confusion_matrix(labels, predictions, labels=list(range(n_classes)))
    values = counts / counts.sum(axis=1, keepdims=True).clip(min=1) if normalize else counts
    names = list(classes) if classes is not None else [str(k) for k in range(n_classes)]
    fig, ax = plt.subplots(figsize=(0.6 * n_classes + 2.5, 0.55 * n_classes + 2))
    im = ax.imshow(values, cmap="Blues", vmin=0)
    for i in range(n_classes):
        for j in range(n_classes):
            text = f"{values[i, j]:.2f}" if normalize else str(counts[i, j])
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="white" if values[i, j] > 0.6 * values.max() else "black")
    ax.set_xticks(range(n_classes), names, rotation=45, ha="right")
    ax.set_yticks(range(n_classes), names)
    ax.set(xlabel="predicted", ylabel="true",
           title="Confusion matrix" + (" (each row sums to 1)" if normalize else ""))
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


@torch.no_grad()
def plot_decision_boundary(model, X, y, resolution: int = 200, ax=None, title: str | None = None):
    """Colour the 2-D plane by the class `model` predicts, with the data points on top."""
    X, y = torch.as_tensor(X).float(), torch.as_tensor(y)
    pad = 0.1 * (X.max(0).values - X.min(0).values)
    lo, hi = X.min(0).values - pad, X.max(0).values + pad
    xs = torch.linspace(lo[0], hi[0], resolution)
    ys = torch.linspace(lo[1], hi[1], resolution)
    grid_x, grid_y = torch.meshgrid(xs, ys, indexing="xy")
    points = torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = model(points.to(device)).float().cpu()
    model.train(was_training)
    pred = out.argmax(1) if out.dim() == 2 and out.shape[1] > 1 else (out.reshape(-1) > 0).long()
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
    else:
        fig = ax.figure
    n_classes = int(max(pred.max(), y.max())) + 1
    ax.contourf(grid_x, grid_y, pred.reshape(resolution, resolution), levels=np.arange(n_classes + 1) - 0.5,
                cmap="tab10", vmin=0, vmax=9, alpha=0.25)
    ax.scatter(X[:, 0], X[:, 1], c=y, cmap="tab10", vmin=0, vmax=9, s=10, edgecolors="k", linewidths=0.3)
    ax.set(xlabel="$x_1$", ylabel="$x_2$", title=title or "Decision boundary")
    ax.set_aspect("equal")
    return fig


def plot_class_balance(labels, classes=None, ax=None, title: str = "Examples per class"):
    """A bar per class: how many examples carry each label."""
    counts = torch.bincount(torch.as_tensor(labels), minlength=len(classes) if classes else 0)
    names = list(classes) if classes is not None else [str(k) for k in range(len(counts))]
    if ax is None:
        fig, ax = plt.subplots(figsize=(8, 3))
    else:
        fig = ax.figure
    ax.bar(names, counts.numpy(), color="tab:blue")
    ax.set(ylabel="examples", title=title)
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    return fig
