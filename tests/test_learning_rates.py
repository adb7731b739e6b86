"""The learning-rate range test: it finds the explosion, suggests a rate that trains, and leaves
the model as it was."""

import math
import warnings

import pytest
import torch
from torch import nn

import course_utils as cu


def spirals_model():
    torch.manual_seed(0)
    return cu.mlp(in_features=2, hidden=(64, 64), out_features=3)


@pytest.fixture(scope="module")
def spirals():
    return cu.make_spirals(n_per_class=300, seed=1)


def test_range_test_falls_then_explodes_and_restores_the_weights(spirals):
    model = spirals_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = cu.lr_find(model, spirals, start_lr=1e-4, end_lr=100, steps=150, batch_size=64, device="cpu")
    assert result.exploded
    assert result.lrs == sorted(result.lrs) and len(result.lrs) == len(result.losses) == len(result.raw_losses)
    assert min(result.losses) < result.losses[0] - 0.2            # the loss fell before exploding
    assert result.lrs[0] < result.min_loss_lr < result.lrs[-1]
    assert math.isclose(result.suggested_lr, result.min_loss_lr / 3)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


def test_the_suggested_rate_trains_and_the_explosion_rate_does_not(spirals):
    result = cu.lr_find(spirals_model(), spirals, start_lr=1e-4, end_lr=100, steps=150, batch_size=64,
                        device="cpu")
    scores = {}
    for name, lr in [("suggested", result.suggested_lr), ("exploded", result.lrs[-1])]:
        model = spirals_model()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", cu.NonFiniteLossWarning)   # the exploded rate may reach NaN
            history = cu.fit(model, spirals, spirals, epochs=30, lr=lr, batch_size=64, device="cpu",
                             progress=False, live_plot=False)
        scores[name] = history.epochs[-1]["val_acc"] if history.epochs else 0.0
    assert scores["suggested"] > 0.8 > scores["exploded"] + 0.2


def test_smoothing_is_the_bias_corrected_moving_average(spirals):
    result = cu.lr_find(spirals_model(), spirals, start_lr=1e-3, end_lr=1e-2, steps=20, smoothing=0.5,
                        device="cpu")
    average = 0.0
    for step, raw in enumerate(result.raw_losses):
        average = 0.5 * average + 0.5 * raw
        assert math.isclose(result.losses[step], average / (1 - 0.5 ** (step + 1)), rel_tol=1e-9)
    assert not result.exploded and len(result.lrs) == 20
    assert math.isclose(result.lrs[-1], 1e-2, rel_tol=1e-9)


def test_optimizer_factory_and_plot(spirals):
    result = cu.lr_find(spirals_model(), spirals, optimizer=lambda p: torch.optim.SGD(p, lr=1, momentum=0.9),
                        start_lr=1e-4, end_lr=10, steps=60, device="cpu")
    ax = result.plot()
    assert ax.get_xscale() == "log" and len(ax.lines) == 4


@pytest.mark.parametrize("kwargs, message", [
    (dict(start_lr=1.0, end_lr=0.1), "start_lr < end_lr"),
    (dict(steps=1), "at least 2"),
    (dict(smoothing=1.0), "EMA beta"),
])
def test_bad_arguments_are_named(spirals, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cu.lr_find(spirals_model(), spirals, device="cpu", **kwargs)


def test_a_model_that_is_nan_from_the_start_gets_a_clear_error(spirals):
    model = spirals_model()
    with torch.no_grad():
        model[1].weight.fill_(float("nan"))
    with pytest.raises(RuntimeError, match="not finite from the first steps"):
        cu.lr_find(model, spirals, device="cpu")
