"""course_utils.diagnostics: what lessons 04, 05 and 10 read off a training run."""

import math

import matplotlib
import pytest
import torch
from torch import nn

import course_utils as cu
from course_utils.diagnostics import (Diagnostics, layer_gradient_norms, local_slope, recording_activations,
                                      steepest_slope, unit_health)

matplotlib.use("Agg")


def test_slopes_by_autograd_match_the_formulas():
    x = torch.linspace(-6, 6, 101)
    s = torch.sigmoid(x)
    torch.testing.assert_close(local_slope(nn.Sigmoid(), x), s * (1 - s))
    assert steepest_slope(nn.Sigmoid()) == pytest.approx(0.25, abs=1e-6)
    assert steepest_slope(nn.ReLU()) == 1.0


def test_dead_units_are_per_unit_and_saturation_per_entry():
    # unit 0 negative for every example (dead), unit 1 negative for one of two (alive)
    x = torch.tensor([[-1.0, -2.0, 3.0], [-0.5, 1.0, 2.0]])
    health = unit_health(nn.ReLU(), x)
    assert health["dead"] == pytest.approx(1 / 3)
    assert health["saturated"] == pytest.approx(3 / 6)        # ReLU: the inactive entries
    # sigmoid: |x| = 6 is saturated (slope 0.0025 < 5% of 0.25), |x| = 1 is not; nothing is dead
    health = unit_health(nn.Sigmoid(), torch.tensor([[6.0, 1.0], [-6.0, -1.0]]))
    assert health == {"saturated": 0.5, "dead": 0.0}


def test_convolution_units_are_channels():
    x = torch.randn(4, 3, 5, 5).abs()
    x[:, 1] = -x[:, 1]                                        # channel 1 never fires
    assert unit_health(nn.ReLU(), x)["dead"] == pytest.approx(1 / 3)


def _data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 20, generator=g), torch.randint(0, 3, (n,), generator=g)


def _model(activation=nn.Tanh):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 16), activation(), nn.Linear(16, 16), activation(), nn.Linear(16, 3))


def test_records_every_nth_step_and_the_update_ratio_of_plain_sgd():
    x, y = _data()
    model, diagnostics = _model(), Diagnostics(every=4)
    cu.fit(model, (x, y), epochs=2, batch_size=32, lr=0.1, callbacks=[diagnostics], progress=False,
           live_plot=False, device="cpu")
    table = diagnostics.table()
    assert sorted(table.iteration.unique()) == [0, 4, 8, 12]          # 16 steps, recorded every 4
    assert set(table.layer) == {"Tanh 1", "Tanh 3", "Linear 0", "Linear 2", "Linear 4"}
    weights = table[table.kind == "weight"]
    # plain SGD moves w by lr * grad, so |Δw| / |w| = lr |grad| / |w|
    expected = 0.1 * weights.grad_norm / weights.weight_norm
    assert weights.update_ratio.to_numpy() == pytest.approx(expected.to_numpy(), rel=1e-3)
    assert (table[table.kind == "activation"].dead == 0).all()
    assert diagnostics.latest("weight").index.tolist() == ["Linear 0", "Linear 2", "Linear 4"]


def test_gradients_are_recorded_before_clipping_and_hooks_are_removed_after_fit():
    x, y = _data()
    model, diagnostics = _model(), Diagnostics(every=1)
    cu.fit(model, (x, y), epochs=1, batch_size=256, lr=1e-9, progress=False, live_plot=False, device="cpu",
           callbacks=[cu.GradientClipping(max_norm=1e-6), diagnostics])
    first = diagnostics.table().query("kind == 'weight'")
    assert first.grad_norm.max() > 1e-3                               # not the clipped 1e-6
    assert all(not m._forward_hooks for m in model.modules())


def test_dead_relus_are_seen_during_training():
    x, y = _data()
    model = _model(nn.ReLU)
    with torch.no_grad():
        model[2].bias.fill_(-100.0)                                   # second ReLU layer: all dead
    diagnostics = Diagnostics(every=1)
    cu.fit(model, (x, y), epochs=1, batch_size=64, lr=0.01, callbacks=[diagnostics], progress=False,
           live_plot=False, device="cpu")
    units = diagnostics.latest("activation")
    assert units.loc["ReLU 3", "dead"] == 1.0 and units.loc["ReLU 1", "dead"] < 0.5


def test_a_fresh_record_per_fit_and_plots():
    x, y = _data()
    model, diagnostics = _model(), Diagnostics(every=2)
    for _ in range(2):
        cu.fit(model, (x, y), epochs=1, batch_size=64, lr=0.1, callbacks=[diagnostics], progress=False,
               live_plot=False, device="cpu")
    assert sorted(diagnostics.table().iteration.unique()) == [0, 2]
    assert len(diagnostics.plot().axes) == 4
    assert len(diagnostics.plot_over_training("gradient").axes) == 3


def test_clear_errors():
    with pytest.raises(ValueError, match="no activation module"):
        Diagnostics().attach(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="inplace=False"):
        Diagnostics().attach(nn.Sequential(nn.Linear(2, 2), nn.ReLU(inplace=True)))
    with pytest.raises(ValueError, match="Nothing recorded yet"):
        Diagnostics().plot()


def test_gradient_norms_and_recorded_activations():
    x, y = _data(64)
    model = _model()
    norms = layer_gradient_norms(model, x, y)
    assert list(norms) == ["Linear 0", "Linear 2", "Linear 4"] and all(v > 0 for v in norms.values())
    assert all(p.grad is None for p in model.parameters())
    with recording_activations(model) as outputs:
        model(x)
    torch.testing.assert_close(outputs["Tanh 1"], torch.tanh(model[0](x)).detach())
    assert all(not m._forward_hooks for m in model.modules())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_records_on_the_gpu_with_mixed_precision():
    x, y = _data()
    diagnostics = Diagnostics(every=2, sample_size=64)
    cu.fit(_model(), (x, y), epochs=1, batch_size=64, lr=0.1, callbacks=[diagnostics], progress=False,
           live_plot=False, device="cuda")
    table = diagnostics.table()
    assert not table.empty and all(math.isfinite(v) for v in table.query("kind == 'weight'").grad_norm)
