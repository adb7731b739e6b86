"""Diagnostics: look inside a network while it trains (lesson 04; lessons 05 and 10 reuse them).

    diagnostics = Diagnostics(every=20)
    fit(model, train, val, epochs=3, lr=0.1, callbacks=[diagnostics])
    diagnostics.plot()                 # dead and saturated units, update-to-weight ratios, histograms
    diagnostics.plot_over_training()   # each layer's activation histogram, step by step
    diagnostics.table()                # the numbers, one row per layer and recording step

What is measured, and why:
- activations: the output of every activation module (nn.ReLU, nn.Tanh, ...). Their histogram shows
  saturation (sigmoid or tanh outputs piled up at their limits) and collapse (all near zero).
- the local slope of each activation, f'(x) at the inputs it saw, which backpropagation multiplies
  the gradient by. `saturated`: the share of (example, unit) entries where the slope is below 5% of
  the activation's steepest slope (sigmoid beyond about |x| > 4.4, tanh beyond |x| > 2.2; for the
  ReLU family this is simply the inactive, negative side). `dead`: the share of units whose slope is
  exactly 0 for every example of the recorded batch (a ReLU whose input is always negative): no
  gradient reaches the weights in front of it. Both are measured on the training batch of the
  recording step, so a unit active on fewer than about 1 in batch_size examples can count as dead.
- gradients: the norm and histogram of each weight's gradient, layer by layer, before clipping
  (this callback runs before GradientClipping). Norms that shrink or grow by orders of magnitude
  from the last layer to the first are vanishing or exploding gradients; a whole profile that is
  tiny (or huge) is a problem of scale, which the forward activations usually show first.
- update-to-weight ratio: |Δw| / |w| for each weight over one optimizer step. Around 1e-3 is a
  common guide; 1e-5 means the layer barely learns, 1e-1 that it is being thrown around.

Limits: an activation module called twice in one forward pass is recorded for its last call only
(build one module per use); for (batch, features) and (batch, channels, ...) inputs a "unit" is a
feature or a channel, i.e. dimension 1.
"""

from __future__ import annotations

from contextlib import contextmanager

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .callbacks import Callback

ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.Sigmoid, nn.Tanh, nn.SiLU, nn.Softplus,
               nn.SELU, nn.CELU, nn.Hardtanh, nn.ReLU6, nn.Mish)
SATURATED_BELOW = 0.05   # share of the steepest slope under which an entry counts as saturated
HEALTHY_UPDATE_RATIO = 1e-3


def activation_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The activation modules of `model`, labelled 'Tanh 2' (class and name in the model)."""
    return {f"{type(m).__name__} {name}": m for name, m in model.named_modules() if isinstance(m, ACTIVATIONS)}


def weight_layers(model: nn.Module) -> dict[str, nn.Parameter]:
    """The weights of the linear and convolution layers, labelled 'Linear 1', first layer first."""
    return {f"{type(m).__name__} {name}": m.weight for name, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) and m.weight.requires_grad}


def local_slope(activation: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """f'(x) for an element-wise activation, by autograd: the factor backpropagation multiplies by."""
    x = x.detach().float().requires_grad_(True)
    with torch.enable_grad():
        (slope,) = torch.autograd.grad(activation.forward(x).sum(), x)   # forward(): no hooks
    return slope


def steepest_slope(activation: nn.Module) -> float:
    """The largest |f'(x)| of the activation over x in [-20, 20] (0.25 for sigmoid, 1 for ReLU)."""
    return local_slope(activation, torch.linspace(-20, 20, 8001)).abs().max().item()


def unit_health(activation: nn.Module, x: torch.Tensor, saturated_below: float = SATURATED_BELOW,
                peak: float | None = None) -> dict:
    """The saturated share of entries and the dead share of units, for the activation's input x.

    x has shape (batch, units) or (batch, channels, ...): for convolutions a unit is a channel.
    peak: the activation's steepest slope, if already known.
    """
    slope = local_slope(activation, x).abs()
    peak = steepest_slope(activation) if peak is None else peak
    per_unit = slope.transpose(0, 1).reshape(slope.shape[1], -1)     # (units, examples x positions)
    return {"saturated": (slope < saturated_below * peak).float().mean().item(),
            "dead": (per_unit == 0).all(dim=1).float().mean().item()}


def layer_gradient_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss=F.cross_entropy) -> dict:
    """One forward and backward pass; the norm of each layer's weight gradient, first layer first.

    Runs in the model's current mode (call model.eval() first for a model with dropout or BatchNorm,
    whose running statistics a training-mode pass would update). Clears the model's .grad before
    and after, so call it between optimizer steps, not between backward() and step().
    """
    model.zero_grad(set_to_none=True)
    loss(model(x), y).backward()
    norms = {name: w.grad.norm().item() for name, w in weight_layers(model).items()}
    model.zero_grad(set_to_none=True)
    return norms


def _sample(values: torch.Tensor, size: int, generator: torch.Generator) -> np.ndarray:
    """At most `size` values drawn at random: enough for a histogram, small enough to keep."""
    flat = values.detach().flatten().float().cpu()
    if flat.numel() > size:
        flat = flat[torch.randint(flat.numel(), (size,), generator=generator)]
    return flat.numpy()


class Diagnostics(Callback):
    """Record activations, gradients and update sizes of every layer during fit(), every `every` steps.

    Attach it as fit(..., callbacks=[Diagnostics()]) to any model built from activation modules
    (not in-place ones such as nn.ReLU(inplace=True), which overwrite the input needed here). Each
    fit() call starts a fresh record. Recording costs one extra pass through each activation and a
    copy of the weights, on recording steps only.
    """

    order = -10   # before GradientClipping, so gradients are recorded as backward() produced them

    def __init__(self, every: int = 20, sample_size: int = 4096, saturated_below: float = SATURATED_BELOW):
        self.every, self.sample_size, self.saturated_below = every, sample_size, saturated_below
        self.rows: list[dict] = []          # one per layer and recording step: see table()
        self.samples: dict = {}             # (iteration, layer, "activation" | "gradient") -> values
        self._generator = torch.Generator().manual_seed(0)
        self._hooks, self._recording, self._before, self._peak = [], False, None, {}
        self._pending: dict[str, dict] = {}

    # -- attaching ------------------------------------------------------------------------------
    def on_train_begin(self, run):
        self.rows, self.samples = [], {}
        self.attach(run.model)
        self._recording = True                      # record the very first step

    def on_train_end(self, run):
        self.detach()

    def attach(self, model: nn.Module) -> None:
        self.detach()
        layers = activation_layers(model)
        if not layers:
            raise ValueError("Diagnostics found no activation module (nn.ReLU, nn.Tanh, ...) in the model. "
                             "Use activation modules, not torch.relu calls inside forward(), so they can "
                             "be observed.")
        for name, module in layers.items():
            if getattr(module, "inplace", False):
                raise ValueError(f"Activation {name!r} is in-place ({module}); it overwrites the input "
                                 "Diagnostics needs. Build it with inplace=False.")
            self._peak[name] = steepest_slope(module)
            self._hooks.append(module.register_forward_hook(self._activation_hook(name)))

    def detach(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def _activation_hook(self, name):
        def hook(module, inputs, output):
            if not self._recording or not torch.is_grad_enabled():   # skip evaluation passes
                return
            out = output.detach().float()
            self._pending[name] = {
                "kind": "activation", "mean": out.mean().item(), "std": out.std().item(),
                **unit_health(module, inputs[0], self.saturated_below, self._peak[name]),
                "values": _sample(out, self.sample_size, self._generator),
            }
        return hook

    # -- recording ------------------------------------------------------------------------------
    def on_after_backward(self, run):
        if not self._recording:
            return
        run.unscale_gradients()                     # float16 mixed precision scales gradients
        self._before = {}
        for name, w in weight_layers(run.model).items():
            if w.grad is None:
                continue
            self._pending[name] = {"kind": "weight", "weight_norm": w.norm().item(),
                                   "grad_norm": w.grad.norm().item(),
                                   "values": _sample(w.grad, self.sample_size, self._generator)}
            self._before[name] = w.detach().clone()

    def on_batch_end(self, run, loss):
        if self._recording:
            step = run.iteration - 1                # the step that was just taken
            for name, w in weight_layers(run.model).items():
                if name in self._before and name in self._pending:
                    change = (w.detach() - self._before[name]).norm().item()
                    # no change at all: a float16 step skipped after an overflow, not a real ratio
                    ratio = change / max(self._pending[name]["weight_norm"], 1e-12) if change else float("nan")
                    self._pending[name]["update_ratio"] = ratio
            for name, row in self._pending.items():
                kind = "activation" if row["kind"] == "activation" else "gradient"
                self.samples[step, name, kind] = row.pop("values")
                self.rows.append({"iteration": step, "layer": name, **row})
            self._pending, self._before = {}, None
        self._recording = run.iteration % self.every == 0

    # -- reading --------------------------------------------------------------------------------
    def table(self) -> pd.DataFrame:
        """One row per (recording step, layer): activation rows carry mean, std, saturated, dead;
        weight rows carry weight_norm, grad_norm and update_ratio."""
        return pd.DataFrame(self.rows)

    def latest(self, kind: str = "activation") -> pd.DataFrame:
        """The last recording step's rows of one kind ('activation' or 'weight'), indexed by layer."""
        frame = self.table()
        frame = frame[frame.kind == kind]
        return frame[frame.iteration == frame.iteration.max()].set_index("layer")

    def _frame(self) -> pd.DataFrame:
        frame = self.table()
        if frame.empty:
            raise ValueError("Nothing recorded yet: pass this Diagnostics to fit(..., callbacks=[...]) first.")
        return frame

    def plot(self, title: str | None = None):
        """Four panels: dead units and saturated entries over training, update-to-weight ratios
        with the 1e-3 guide, and the activation and gradient histograms at the last recording step."""
        frame = self._frame()
        last = frame.iteration.max()
        fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
        units = frame[frame.kind == "activation"]
        for layer, rows in units.groupby("layer", sort=False):
            line, = axes[0].plot(rows.iteration, rows.dead, label=layer)
            axes[0].plot(rows.iteration, rows.saturated, ls=":", color=line.get_color())
        axes[0].set(xlabel="iteration", ylabel="share", ylim=(-0.02, 1.02),
                    title="dead units (solid), saturated entries (dotted)")
        weights = frame[frame.kind == "weight"].dropna(subset=["update_ratio"])
        for layer, rows in weights.groupby("layer", sort=False):
            axes[1].plot(rows.iteration, rows.update_ratio, label=layer)
        axes[1].axhline(HEALTHY_UPDATE_RATIO, color="k", ls="--", lw=1)
        axes[1].set(xlabel="iteration", ylabel="|Δw| / |w|", yscale="log",
                    title="update / weight ratio (dashed: 1e-3)")
        self._histograms(axes[2], last, "activation", "activation value")
        self._histograms(axes[3], last, "gradient", "weight gradient", symmetric=True)
        for ax in axes:
            ax.legend(fontsize=7, ncol=2)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        return fig

    def _histograms(self, ax, iteration, kind, xlabel, symmetric=False):
        for layer in [layer for (it, layer, k) in self.samples if it == iteration and k == kind]:
            values = self.samples[iteration, layer, kind]
            limit = np.quantile(np.abs(values), 0.99) if symmetric else None
            counts, edges = np.histogram(values, bins=60, range=(-limit, limit) if limit else None, density=True)
            ax.plot((edges[:-1] + edges[1:]) / 2, counts, label=layer)
        ax.set(xlabel=xlabel, ylabel="density", title=f"{kind}s at iteration {iteration}")

    def plot_over_training(self, kind: str = "activation", bins: int = 50):
        """Each layer's histogram at every recording step, as an image: iteration across, value up,
        darker where more values fall (the view TensorBoard calls 'distributions')."""
        frame = self._frame()
        steps = sorted(frame.iteration.unique())
        layers = list(dict.fromkeys(layer for (_, layer, k) in self.samples if k == kind))
        everything = np.concatenate([self.samples[s, layer, kind] for s in steps for layer in layers
                                     if (s, layer, kind) in self.samples])
        low, high = np.quantile(everything, [0.005, 0.995])
        if kind == "gradient":
            low, high = -max(abs(low), abs(high)), max(abs(low), abs(high))
        fig, axes = plt.subplots(1, len(layers), figsize=(2.6 * len(layers), 2.8), sharey=True, squeeze=False)
        for ax, layer in zip(axes[0], layers):
            image = np.stack([np.histogram(self.samples[s, layer, kind], bins=bins, range=(low, high), density=True)[0]
                              for s in steps if (s, layer, kind) in self.samples], axis=1)
            ax.imshow(np.log1p(image), origin="lower", aspect="auto", cmap="Blues",
                      extent=(steps[0], steps[-1], low, high))
            ax.set(title=layer, xlabel="iteration")
        axes[0][0].set_ylabel(f"{kind} value")
        fig.tight_layout()
        return fig


@contextmanager
def recording_activations(model: nn.Module):
    """Collect every activation module's output during the forward passes inside the block.

        with recording_activations(model) as outputs:
            model(x)
        outputs["ReLU 2"]   # the output of model[2]
    """
    outputs: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda m, i, o, name=name: outputs.__setitem__(name, o.detach()))
             for name, m in activation_layers(model).items()]
    try:
        yield outputs
    finally:
        for hook in hooks:
            hook.remove()
