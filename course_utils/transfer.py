"""Transfer learning (lesson 09): a source task with many labels, a target task with few, a small
CNN whose body can be reused, and the three ways to adapt it: train from scratch, freeze the body
and train a new head, or fine-tune everything (optionally with a smaller rate for the body).

    task = transfer_task()                        # classes {0,1,2,7,8} -> {3,4,5,6,9}
    model = small_cnn()                           # body (features) + head (classifier)
    ... pretrain on task.x_source, save with course_utils.Checkpoint ...
    x, y = task.few_labels(per_class=10, seed=0)
    model, val_acc = adapt(pretrained, x, y, task, method="finetune", lr=1e-3)

The target's validation set chooses the learning rate and the stopping step; its test set is read
once per choice. `torchvision_weights` finds ImageNet weights for the optional last section of
the lesson without a long wait on a network that is not there.
"""

from __future__ import annotations

import copy
import socket
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .data import Standardize, load_fashion_mnist, normalization_stats
from .training import accuracy, evaluate

SOURCE_CLASSES = (0, 1, 2, 7, 8)  # T-shirt/top, Trouser, Pullover, Sneaker, Bag
TARGET_CLASSES = (3, 4, 5, 6, 9)  # Dress, Coat, Sandal, Shirt, Ankle boot
METHODS = ("scratch", "frozen", "finetune", "discriminative")


@dataclass
class TransferTask:
    """Standardized (B, 1, 28, 28) images; labels renumbered 0..4 within each task."""
    x_source: torch.Tensor
    y_source: torch.Tensor
    x_source_val: torch.Tensor
    y_source_val: torch.Tensor
    x_pool: torch.Tensor      # target training images to draw the few labelled examples from
    y_pool: torch.Tensor
    x_val: torch.Tensor       # target validation set: chooses rates and stopping steps
    y_val: torch.Tensor
    x_test: torch.Tensor      # target test set: read once per choice
    y_test: torch.Tensor
    standardize: Standardize

    def few_labels(self, per_class: int, seed: int = 0):
        """`per_class` random labelled target images of each class (a different draw per seed)."""
        order = torch.randperm(len(self.y_pool), generator=torch.Generator().manual_seed(seed))
        chosen = torch.cat([order[self.y_pool[order] == c][:per_class] for c in range(5)])
        if len(chosen) < 5 * per_class:
            raise ValueError(f"per_class={per_class} is more than the pool holds; use at most "
                             f"{min(int((self.y_pool == c).sum()) for c in range(5))}")
        return self.x_pool[chosen], self.y_pool[chosen]


def transfer_task(source_classes=SOURCE_CLASSES, target_classes=TARGET_CLASSES, n_source=12000,
                  val_per_class=100, n_test=2000, device="cpu", data_dir=None) -> TransferTask:
    """Split Fashion-MNIST into a source task (`n_source` labelled images, 2,000 more to validate)
    and a target task (a pool of unlabelled-until-drawn images, `val_per_class` validation images
    per class and `n_test` test images). Both are standardized with the *source* training images'
    statistics: the pretrained network saw its inputs on that scale."""
    data = load_fashion_mnist(data_dir)
    if set(source_classes) & set(target_classes):
        raise ValueError("source and target classes must not overlap")
    src_ids, tgt_ids = torch.tensor(source_classes), torch.tensor(target_classes)
    renumber = torch.full((10,), -1, dtype=torch.long)
    renumber[src_ids] = torch.arange(len(src_ids))
    renumber[tgt_ids] = torch.arange(len(tgt_ids))
    x, y = data.train_images, data.train_labels
    x_src, y_src = x[torch.isin(y, src_ids)], renumber[y[torch.isin(y, src_ids)]]
    x_tgt, y_tgt = x[torch.isin(y, tgt_ids)], renumber[y[torch.isin(y, tgt_ids)]]
    if n_source + 2000 > len(y_src):
        raise ValueError(f"n_source={n_source} leaves no 2,000 separate source validation images; "
                         f"use at most {len(y_src) - 2000}")
    standardize = Standardize(*normalization_stats(x_src[:n_source]))

    order = torch.randperm(len(y_tgt), generator=torch.Generator().manual_seed(0))
    val = torch.cat([order[y_tgt[order] == c][:val_per_class] for c in range(len(tgt_ids))])
    pool = order[~torch.isin(order, val)]
    test = torch.isin(data.test_labels, tgt_ids)
    parts = [x_src[:n_source], y_src[:n_source], x_src[-2000:], y_src[-2000:], x_tgt[pool],
             y_tgt[pool], x_tgt[val], y_tgt[val], data.test_images[test][:n_test],
             renumber[data.test_labels[test][:n_test]]]
    parts = [standardize(p) if p.dtype == torch.uint8 else p for p in parts]
    return TransferTask(*[p.to(device) for p in parts], standardize)


def small_cnn(num_classes: int = 5, channels=(16, 32, 32)) -> nn.Sequential:
    """model[0] is the body (three conv-BN-ReLU blocks, global average pooling), model[1] the head.

    The body ends in global average pooling, like the ResNets of torchvision: its output is one
    number per channel, whatever the image size."""
    def block(c_in, c_out, pool):
        return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()] + \
               ([nn.MaxPool2d(2)] if pool else [])

    a, b, c = channels
    body = nn.Sequential(*block(1, a, True), *block(a, b, True), *block(b, c, False),   # 28->14->7
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return nn.Sequential(body, nn.Linear(c, num_classes))


def with_new_head(pretrained: nn.Sequential, num_classes: int = 5) -> nn.Sequential:
    """A copy of `pretrained` whose body keeps the learned weights and whose head is new."""
    model = copy.deepcopy(pretrained)
    model[1] = nn.Linear(model[1].in_features, num_classes)
    return model


def adapt(pretrained: nn.Sequential | None, x, y, task: TransferTask, method: str, lr: float,
          steps: int = 100, batch_size: int = 50, checks: int = 4, seed: int = 0):
    """Train on the few labelled target images (x, y) with Adam and return (model, val accuracy).

    method: "scratch" (a fresh small_cnn, `pretrained` unused), "frozen" (pretrained body fixed,
    only the new head learns), "finetune" (everything learns at `lr`) or "discriminative" (the
    head at `lr`, the body at lr / 10). Validation accuracy is measured `checks` times; the model
    returned is the one at the best of them (early stopping chosen on validation).

    A frozen body is a fixed function, so "frozen" computes its features once and trains the
    head on them: the same numbers as running the body at every step (lesson 09 checks it),
    several times faster.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    torch.manual_seed(seed)
    num_classes = len(torch.unique(task.y_val))
    if method == "scratch":
        model = small_cnn(num_classes, _channels(pretrained))
    else:
        model = with_new_head(pretrained, num_classes)
    model = model.to(x.device)
    body, head = model[0], model[1]
    body.requires_grad_(method != "frozen")
    if method == "frozen":
        x, x_val, trained = features(body, x), features(body, task.x_val), head
    else:
        x_val, trained = task.x_val, model
    groups = [{"params": head.parameters(), "lr": lr}]
    if method != "frozen":
        groups.append({"params": body.parameters(), "lr": lr / 10 if method == "discriminative" else lr})
    optimizer = torch.optim.Adam(groups)
    draw = torch.Generator(device="cpu").manual_seed(seed)
    best_acc, best_state = -1.0, None
    interval = max(1, steps // checks)
    for step in range(1, steps + 1):
        trained.train()
        batch = torch.randint(0, len(y), (min(batch_size, len(y)),), generator=draw).to(x.device)
        loss = F.cross_entropy(trained(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % interval == 0 or step == steps:
            val_acc = evaluate_accuracy(trained, x_val, task.y_val)
            if val_acc > best_acc:
                best_acc, best_state = val_acc, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return model, best_acc


def _channels(model):
    if model is None:
        return (16, 32, 32)
    return tuple(m.out_channels for m in model[0] if isinstance(m, nn.Conv2d))


def evaluate_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """course_utils.evaluate's accuracy: evaluation mode (BatchNorm uses its running statistics),
    no graph, the model's mode restored afterwards."""
    return evaluate(model, (x, y))["acc"]


def features(body: nn.Module, x: torch.Tensor, depth: int | None = None, batch_size: int = 1000):
    """The output of the first `depth` layers of `body` (all of them by default), flattened."""
    layers = body if depth is None else body[:depth]
    was_training = body.training
    layers.eval()
    with torch.no_grad():
        out = torch.cat([layers(x[i:i + batch_size]).flatten(1) for i in range(0, len(x), batch_size)])
    layers.train(was_training)
    return out


def linear_probe(train_features, y, val_features, y_val, weight_decays=(1e-4, 1e-3, 1e-2),
                 steps: int = 200, lr: float = 1e-2):
    """A linear classifier on fixed features (full-batch Adam, features standardized with the
    training part's statistics), its weight decay chosen on validation.

    Returns (predict, val accuracy): predict(features) gives the chosen classifier's logits."""
    mean, std = train_features.mean(0), train_features.std(0).clamp_min(1e-2)  # constant features stay small
    best = (-1.0, None)
    for weight_decay in weight_decays:
        torch.manual_seed(0)
        head = nn.Linear(train_features.shape[1], int(y.max()) + 1).to(train_features.device)
        optimizer = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
        for _ in range(steps):
            loss = F.cross_entropy(head((train_features - mean) / std), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            val_acc = accuracy(head((val_features - mean) / std), y_val)
        if val_acc > best[0]:
            best = (val_acc, head)
    head = best[1]

    def predict(f):
        with torch.no_grad():
            return head((f - mean) / std)
    return predict, best[0]


def torchvision_weights(name: str = "ResNet18_Weights", timeout: float = 3.0):
    """torchvision's ImageNet weights `name` if they are on disk or can be downloaded now, else
    None with the reason, so a lesson can skip its online part instead of failing. The connection
    attempt waits at most `timeout` seconds; the name lookup before it is the system's (quick
    where there is no network, as in the course's CI).

    Returns (weights, reason): weights is a torchvision WeightsEnum member or None."""
    import torchvision

    weights = getattr(torchvision.models, name).DEFAULT
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if cached.exists():
        return weights, f"found on disk: {cached}"
    host = weights.url.split("/")[2]
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError as error:
        return None, (f"{name} is not on disk ({cached}) and {host} cannot be reached ({error}). "
                      "Run this section with internet access once; the weights are then cached.")
    return weights, f"downloadable from {host}"


def imagenet_features(weights, x: torch.Tensor, standardize: Standardize, size: int = 64,
                      batch_size: int = 250) -> torch.Tensor:
    """ResNet-18 features (512 per image, the layer before its classifier) of standardized
    Fashion-MNIST images: undo our standardization, copy the grey channel to three, resize to
    `size` pixels and normalize as the ImageNet weights expect. weights=None gives a random
    ResNet-18 (what the tests use)."""
    import torchvision

    network = torchvision.models.resnet18(weights=weights)
    network.fc = nn.Identity()
    network = network.to(x.device).eval()
    imagenet_mean = torch.tensor([0.485, 0.456, 0.406], device=x.device).view(1, 3, 1, 1)
    imagenet_std = torch.tensor([0.229, 0.224, 0.225], device=x.device).view(1, 3, 1, 1)
    mean, std = standardize.mean.to(x.device), standardize.std.to(x.device)
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            pixels = (x[i:i + batch_size] * std + mean).clamp(0, 1).expand(-1, 3, -1, -1)
            pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False)
            out.append(network((pixels - imagenet_mean) / imagenet_std))
    return torch.cat(out)
