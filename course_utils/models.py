"""Models used across the lessons. Each is a plain nn.Sequential you can print and index."""

from __future__ import annotations

from torch import nn


def lenet(batch_norm: bool = True, activation=nn.Sigmoid, num_classes: int = 10) -> nn.Sequential:
    """LeNet-5 for 28x28 grey images, with BatchNorm after each conv/linear layer by default.

    The study notes' model (lessons 05 and 06, and the benchmark): two 5x5 convolutions with
    average pooling, then three linear layers, sigmoid activations.
    """
    def norm(kind, n):
        return [kind(n)] if batch_norm else []

    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5), *norm(nn.BatchNorm2d, 6), activation(),      # 6x24x24
        nn.AvgPool2d(kernel_size=2, stride=2),                                         # 6x12x12
        nn.Conv2d(6, 16, kernel_size=5), *norm(nn.BatchNorm2d, 16), activation(),    # 16x8x8
        nn.AvgPool2d(kernel_size=2, stride=2),                                         # 16x4x4
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 120), *norm(nn.BatchNorm1d, 120), activation(),
        nn.Linear(120, 84), *norm(nn.BatchNorm1d, 84), activation(),
        nn.Linear(84, num_classes),
    )


def mlp(in_features: int = 784, hidden=(256,), out_features: int = 10, activation=nn.ReLU,
        dropout: float = 0.0) -> nn.Sequential:
    """A multilayer perceptron; images are flattened first, so it takes (B, 1, 28, 28) or (B, 784)."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), activation()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
