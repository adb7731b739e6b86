"""Lesson 09's transfer tools on real Fashion-MNIST: the tasks' split, adapt's four methods, the
probes, and the ImageNet path (run with a random ResNet-18, so it cannot rot while CI is offline)."""

import pytest
import torch

from course_utils.transfer import (adapt, evaluate_accuracy, features, imagenet_features,
                                   linear_probe, small_cnn, torchvision_weights, transfer_task)


@pytest.fixture(scope="module")
def task():
    return transfer_task(n_source=2000, n_test=500)


def test_tasks_are_disjoint_and_few_labels_are_balanced(task):
    assert set(task.y_source.tolist()) == set(task.y_val.tolist()) == set(range(5))
    assert abs(task.x_source.mean().item()) < 0.05 and abs(task.x_source.std().item() - 1) < 0.05
    x, y = task.few_labels(7, seed=1)
    assert torch.bincount(y).tolist() == [7] * 5
    x2, _ = task.few_labels(7, seed=2)
    assert not torch.equal(x, x2), "another seed draws other images"
    pool = {tuple(row.tolist()) for row in task.x_pool.flatten(1)[:, ::37]}
    assert not any(tuple(row.tolist()) in pool for row in task.x_val.flatten(1)[:, ::37]), "validation images are not in the pool"
    with pytest.raises(ValueError, match="at most"):
        task.few_labels(100_000)
    with pytest.raises(ValueError, match="overlap"):
        transfer_task(source_classes=(0, 1), target_classes=(1, 2))


def test_adapt_methods_change_what_they_should(task):
    pretrained = small_cnn().eval()
    x, y = task.few_labels(5)
    for method in ("scratch", "frozen", "finetune", "discriminative"):
        model, val_acc = adapt(pretrained, x, y, task, method, lr=1e-2, steps=8, checks=2)
        assert 0 <= val_acc <= 1 and val_acc == pytest.approx(evaluate_accuracy(model, task.x_val, task.y_val))
        same_body = all(torch.equal(a, b) for a, b in zip(model[0].state_dict().values(), pretrained[0].state_dict().values()))
        assert same_body == (method == "frozen"), method
    with pytest.raises(ValueError, match="method must be one of"):
        adapt(pretrained, x, y, task, "freeze", lr=1e-2)


def test_linear_probe_learns_and_features_have_the_right_size(task):
    body = small_cnn()[0]
    assert features(body, task.x_val[:3], 4).shape == (3, 16 * 14 * 14)
    assert features(body, task.x_val[:3]).shape == (3, 32)
    x, y = task.few_labels(20)
    predict, val_acc = linear_probe(x.flatten(1), y, task.x_val.flatten(1), task.y_val)
    assert val_acc > 0.6, "a linear model on pixels separates these five classes well above chance (0.2)"
    assert predict(task.x_test.flatten(1)).shape == (len(task.y_test), 5)


def test_imagenet_path_runs_without_weights(task):
    f = imagenet_features(None, task.x_val[:4], task.standardize, size=32)
    assert f.shape == (4, 512) and torch.isfinite(f).all()
    weights, reason = torchvision_weights("ResNet18_Weights", timeout=1.0)
    assert (weights is None) == ("cannot be reached" in reason), reason
