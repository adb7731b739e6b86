"""A small training script with bugs planted in it, for lesson 10 to debug.

    script = BrokenScript()                  # every bug in BUGS planted
    script.run()                             # trains; {"val_acc": ..., "test_acc": ..., ...}
    BrokenScript(bugs=()).run()              # the same script with every bug fixed

It reads Fashion-MNIST as a table, the way the popular CSV copy of it comes (one row per image:
the label, then 784 pixels), and trains an MLP whose activation is written by hand. Each planted
bug is one `if` on a name in BUGS, so the broken line and the fixed line sit side by side; in a
real script only one of them is there, and nothing marks it. The pieces (prepare, batches,
make_model, loss, make_optimizer, predict) are methods so that the checks of
course_utils.playbook can test each one alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BUGS = {
    "raw_pixels": "the inputs are raw 0-255 pixels, never standardized",
    "label_column": "the table's label column is kept as an input feature (label leakage)",
    "shuffled_pairs": "training batches shuffle images and labels with two different permutations",
    "wrong_backward": "the hand-written activation's backward forgets to multiply by grad_output",
    "nll_on_logits": "F.nll_loss is applied to raw logits (it expects log-probabilities)",
    "lr_too_high": "Adam runs at lr 0.1, a hundred times its usual rate",
    "no_eval": "predict() never calls model.eval(), so dropout stays on at evaluation",
}


def fashion_mnist_table(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Images and labels as one uint8 table, a row per image: label, then the 784 pixels."""
    return torch.cat([labels.to(torch.uint8)[:, None], images.flatten(1)], dim=1)


class SoftplusByHand(torch.autograd.Function):
    """softplus(x) = log(1 + e^x), with its derivative sigmoid(x) written by hand."""

    @staticmethod
    def forward(ctx, x, forget_chain_rule: bool = False):
        ctx.save_for_backward(x)
        ctx.forget_chain_rule = forget_chain_rule
        return x.clamp(min=0) + torch.log1p(torch.exp(-x.abs()))   # stable for large |x|

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        if ctx.forget_chain_rule:                                # bug: wrong_backward
            return torch.sigmoid(x), None
        return grad_output * torch.sigmoid(x), None


class HandWrittenSoftplus(nn.Softplus):
    """The module around SoftplusByHand. It subclasses nn.Softplus only so that
    course_utils.diagnostics recognises it as an activation; forward is ours."""

    def __init__(self, forget_chain_rule: bool = False):
        super().__init__()
        self.forget_chain_rule = forget_chain_rule

    def forward(self, x):
        return SoftplusByHand.apply(x, self.forget_chain_rule)


class BrokenScript:
    """The training script of lesson 10. bugs: the names in BUGS to plant (default: all of them).

    classes: the Fashion-MNIST classes to keep, relabelled 0..K-1 (lesson 10 starts with two).
    n_train, n_val: images drawn from the training set (stratified); test: all test images of
    those classes.
    """

    def __init__(self, bugs=tuple(BUGS), classes=tuple(range(10)), n_train: int = 10000,
                 n_val: int = 2000, epochs: int = 4, batch_size: int = 64, seed: int = 0,
                 data=None, device="cpu"):
        from sklearn.model_selection import train_test_split

        from .data import load_fashion_mnist

        unknown = set(bugs) - set(BUGS)
        if unknown:
            raise ValueError(f"Unknown bug(s) {sorted(unknown)}; the planted bugs are {sorted(BUGS)}.")
        self.bugs, self.classes = frozenset(bugs), tuple(classes)
        self.epochs, self.batch_size, self.seed, self.device = epochs, batch_size, seed, torch.device(device)
        data = data if data is not None else load_fashion_mnist()

        def keep(images, labels):
            mask = torch.isin(labels, torch.tensor(self.classes))
            relabel = torch.full((10,), -1, dtype=torch.long)
            relabel[list(self.classes)] = torch.arange(len(self.classes))
            return fashion_mnist_table(images[mask], relabel[labels[mask]])

        table = keep(data.train_images, data.train_labels)
        train_idx, val_idx = train_test_split(range(len(table)), train_size=n_train, test_size=n_val,
                                              random_state=seed, stratify=table[:, 0].numpy())
        self.train_table, self.val_table = table[train_idx], table[val_idx]
        self.test_table = keep(data.test_images, data.test_labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    # -- the script's pieces, in the order it runs them -------------------------------------------
    def features(self, table: torch.Tensor) -> torch.Tensor:
        """The input columns of the table."""
        if "label_column" in self.bugs:                                      # bug: label_column
            return table.float()
        return table[:, 1:].float()

    def prepare(self, table: torch.Tensor):
        """Rows of the table -> (inputs, labels) on the script's device. Each column is
        standardized with the training rows' mean and standard deviation (floored at 1 grey
        level, so that a pixel almost constant in training is not blown up)."""
        x, labels = self.features(table), table[:, 0].long()
        if "raw_pixels" not in self.bugs:                                    # bug: raw_pixels
            train = self.features(self.train_table)
            x = (x - train.mean(dim=0)) / train.std(dim=0).clamp(min=1)
        return x.to(self.device), labels.to(self.device)

    def batches(self, x, y, generator: torch.Generator):
        """One epoch of shuffled mini-batches."""
        order = torch.randperm(len(y), generator=generator).to(self.device)
        label_order = order
        if "shuffled_pairs" in self.bugs:                                    # bug: shuffled_pairs
            label_order = torch.randperm(len(y), generator=generator).to(self.device)
        for start in range(0, len(y), self.batch_size):
            yield x[order[start:start + self.batch_size]], y[label_order[start:start + self.batch_size]]

    def make_model(self, in_features: int) -> nn.Sequential:
        forget = "wrong_backward" in self.bugs                               # bug: wrong_backward
        return nn.Sequential(
            nn.Linear(in_features, 256), HandWrittenSoftplus(forget), nn.Dropout(0.2),
            nn.Linear(256, 128), HandWrittenSoftplus(forget), nn.Dropout(0.2),
            nn.Linear(128, self.num_classes),
        ).to(self.device)

    def loss(self, logits, labels):
        if "nll_on_logits" in self.bugs:                                     # bug: nll_on_logits
            return F.nll_loss(logits, labels)
        return F.cross_entropy(logits, labels)

    def make_optimizer(self, parameters):
        return torch.optim.Adam(parameters, lr=0.1 if "lr_too_high" in self.bugs else 1e-3)  # bug: lr_too_high

    def predict(self, model, x) -> torch.Tensor:
        """The model's logits for every row of x (like course_utils.predict)."""
        if "no_eval" not in self.bugs:                                       # bug: no_eval
            model.eval()
        with torch.no_grad():
            return model(x)

    def accuracy(self, model, x, y) -> float:
        return (self.predict(model, x).argmax(dim=1) == y).float().mean().item()

    # -- the script -------------------------------------------------------------------------------
    def run(self, progress: bool = False) -> dict:
        """Train for `epochs` epochs; validation accuracy after each, test accuracy at the end."""
        torch.manual_seed(self.seed)
        generator = torch.Generator().manual_seed(self.seed)
        x_train, y_train = self.prepare(self.train_table)
        x_val, y_val = self.prepare(self.val_table)
        x_test, y_test = self.prepare(self.test_table)
        model = self.make_model(x_train.shape[1])
        optimizer = self.make_optimizer(model.parameters())
        losses, val_acc = [], []
        for _ in range(self.epochs):
            model.train()
            for xb, yb in self.batches(x_train, y_train, generator):
                loss = self.loss(model(xb), yb)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
            val_acc.append(self.accuracy(model, x_val, y_val))
        test_acc = self.accuracy(model, x_test, y_test)
        return {"model": model, "losses": losses, "val_acc": val_acc, "test_acc": test_acc}


def check_script(script: BrokenScript, seed: int = 0) -> list:
    """Every check of course_utils.playbook, applied to the pieces of `script` (lesson 10, section 3.7)."""
    from . import playbook
    from .diagnostics import Diagnostics
    from .training import fit

    x, y = script.prepare(script.train_table)
    x_val, _ = script.prepare(script.val_table)
    x_test, _ = script.prepare(script.test_table)
    batch_x, batch_y = next(script.batches(x, y, torch.Generator().manual_seed(seed)))
    make_model = lambda: script.make_model(x.shape[1])                              # noqa: E731
    torch.manual_seed(seed)
    model = make_model()
    forget = "wrong_backward" in script.bugs
    checks = [
        playbook.check_input_statistics(x),
        playbook.check_inputs_ignore_labels(lambda images, labels: script.prepare(fashion_mnist_table(images, labels)),
                                            script.train_table[:, 1:], script.train_table[:, 0], seed=seed),
        playbook.check_labels_match_images(batch_x, batch_y, x, y),
        playbook.check_no_overlap(x, x_test),
        playbook.check_initial_loss(model, x[:512], y[:512], script.loss, script.num_classes),
        playbook.check_gradients(lambda t: SoftplusByHand.apply(t, forget), (8, 5), seed=seed),
        playbook.check_overfits_one_batch(make_model, script.make_optimizer, script.loss, batch_x[:32], batch_y[:32]),
    ]
    lr = script.make_optimizer(model.parameters()).param_groups[0]["lr"]
    checks.append(playbook.check_learning_rate(lr, make_model(), (x, y), script.make_optimizer, script.loss,
                                               batch_size=script.batch_size, device=script.device))
    diagnostics = Diagnostics(every=8)
    monitored = make_model()
    fit(monitored, (x, y), epochs=1, optimizer=script.make_optimizer(monitored.parameters()), loss=script.loss,
        batch_size=script.batch_size, device=script.device, callbacks=[diagnostics], progress=False,
        live_plot=False, nan_guard=False)
    checks.append(playbook.check_units_alive(diagnostics))
    checks.append(playbook.check_evaluation_is_deterministic(script.predict, monitored, x_val))
    return checks
