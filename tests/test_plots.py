import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from conftest import small_mlp
from course_utils import (FASHION_MNIST_CLASSES, compare_histories, fit, plot_class_balance,
                          plot_confusion_matrix, plot_decision_boundary, show_images)

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def trained(spirals_module):
    x, y = spirals_module
    model = small_mlp()
    history = fit(model, (x, y), (x, y), epochs=5, optimizer="adam", lr=0.01, progress=False, label="adam")
    return model, history


@pytest.fixture(scope="module")
def spirals_module():
    from course_utils import make_spirals
    return make_spirals(n_per_class=100, seed=0)


def test_learning_curves_have_loss_and_accuracy_panels(trained):
    _, history = trained
    fig = history.plot()
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    loss_ax, acc_ax = fig.axes
    labels = [line.get_label() for line in loss_ax.lines]
    assert labels == ["adam: train (per iteration)", "adam: train", "adam: validation"]
    np.testing.assert_allclose(acc_ax.lines[1].get_ydata(), history["val_acc"])
    # the per-iteration curve is placed on the epoch axis: its last point is at epoch 5
    assert loss_ax.lines[0].get_xdata()[-1] == pytest.approx(5.0)


def test_histories_compare_on_shared_axes(trained, spirals_module):
    _, first = trained
    second = fit(small_mlp(), spirals_module, spirals_module, epochs=3, lr=0.1, progress=False, label="sgd")
    fig = compare_histories([first, second])
    labels = [line.get_label() for line in fig.axes[0].lines]
    assert labels == ["adam: train", "adam: validation", "sgd: train", "sgd: validation"]


def test_regression_history_has_one_panel():
    from course_utils import make_polynomial_regression
    x, y = make_polynomial_regression(64)
    history = fit(torch.nn.Linear(1, 1), (x[:, None], y[:, None]), epochs=2, lr=0.1, loss="mse",
                  progress=False)
    assert len(history.plot().axes) == 1


def test_image_grid_marks_wrong_predictions(fmnist):
    images, labels = fmnist.test_images[:12], fmnist.test_labels[:12]
    predictions = labels.clone()
    predictions[[1, 5]] = (labels[[1, 5]] + 1) % 10
    fig = show_images(images, labels, predictions, classes=FASHION_MNIST_CLASSES, ncols=6)
    titles = [ax.title for ax in fig.axes]
    red = [t.get_text() for t in titles if t.get_color() == "crimson"]
    assert len(fig.axes) == 12 and len(red) == 2
    assert f"(true: {FASHION_MNIST_CLASSES[labels[1]]})" in red[0]
    fig = show_images(images[:3].unsqueeze(1).float() / 255, labels[:3], classes=FASHION_MNIST_CLASSES, ncols=5)
    assert [ax.title.get_text() for ax in fig.axes[:3]] == [FASHION_MNIST_CLASSES[k] for k in labels[:3]]


def test_rgb_images_show_in_colour():
    fig = show_images(torch.rand(2, 3, 16, 16), ncols=2)
    assert fig.axes[0].images[0].get_array().shape == (16, 16, 3)


def test_confusion_matrix_rows_are_recall(fmnist):
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    predictions = np.array([0, 0, 0, 1, 1, 1, 2, 0])
    fig = plot_confusion_matrix(labels, predictions, classes=["a", "b", "c"])
    matrix = fig.axes[0].images[0].get_array()
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0)
    np.testing.assert_allclose(np.diag(matrix), [0.75, 1.0, 0.5])
    counts = plot_confusion_matrix(labels, predictions, normalize=False).axes[0].images[0].get_array()
    assert counts.sum() == 8


def test_decision_boundary_colours_the_plane(trained, spirals_module):
    model, _ = trained
    x, y = spirals_module
    fig = plot_decision_boundary(model, x, y, resolution=50)
    ax = fig.axes[0]
    assert len(ax.collections) >= 2  # filled regions and the points
    assert ax.get_title() == "Decision boundary"


def test_class_balance_bars(fmnist):
    fig = plot_class_balance(fmnist.train_labels, FASHION_MNIST_CLASSES)
    heights = [bar.get_height() for bar in fig.axes[0].patches]
    assert heights == [6000] * 10
