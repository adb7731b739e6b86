"""The training playbook (lesson 10): checks that find the usual bugs of a training script in
seconds, each a function you can run on your own code's pieces. Every check returns a Check
(name, passed, detail), so a list of them prints as a report:

    print_report([check_input_statistics(x_train),
                  check_initial_loss(model, x_batch, y_batch, loss_fn, num_classes=10),
                  check_overfits_one_batch(make_model, make_optimizer, loss_fn, x_batch, y_batch),
                  check_evaluation_is_deterministic(predict, model, x_val)])

What each one catches is in its docstring; lesson 10 plants one bug per check in
course_utils.broken_script and shows each check failing on its bug and passing on the fix.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch.autograd.gradcheck import GradcheckError


@dataclass
class Check:
    name: str
    passed: bool
    detail: str

    def __str__(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'}  {self.name}: {self.detail}"


def print_report(checks) -> None:
    for check in checks:
        print(check)


def _row_keys(x: torch.Tensor) -> list[bytes]:
    """Each row of x as bytes: equal rows, equal keys (used to look examples up by content)."""
    return [row.tobytes() for row in x.detach().flatten(1).cpu().contiguous().numpy()]


# -- the data ---------------------------------------------------------------------------------------
def check_input_statistics(x: torch.Tensor, tolerance: float = 0.5) -> Check:
    """The inputs are standardized: mean within `tolerance` of 0 and standard deviation within
    `tolerance` of 1 (catches raw 0-255 pixels, or a normalization applied twice)."""
    mean, std = x.float().mean().item(), x.float().std().item()
    passed = abs(mean) < tolerance and abs(std - 1) < tolerance
    return Check("inputs standardized", passed, f"mean {mean:.3g}, std {std:.3g} (want about 0 and 1)")


def check_inputs_ignore_labels(prepare, images, labels, seed: int = 0) -> Check:
    """The inputs must not depend on the labels. `prepare(images, labels) -> (x, y)` is your data
    preparation; it runs twice, the second time with the labels shuffled, and the inputs must come
    out identical (catches a label column kept as a feature, statistics computed per class, ...)."""
    shuffled = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]
    x1, _ = prepare(images, labels)
    x2, _ = prepare(images, shuffled)
    passed = x1.shape == x2.shape and torch.equal(x1, x2)
    detail = ("identical when the labels are shuffled" if passed else
              "the inputs change when only the labels change: the label leaks into the input")
    return Check("inputs independent of labels", passed, detail)


def check_labels_match_images(batch_x, batch_y, x, y) -> Check:
    """Every (input, label) pair of a batch your training loop produced appears in the prepared
    data (x, y) with that label (catches inputs and labels shuffled or sliced separately)."""
    label_of = dict(zip(_row_keys(x), y.tolist()))
    found = [label_of.get(key) for key in _row_keys(batch_x)]
    missing = sum(label is None for label in found)
    wrong = sum(label is not None and label != int(target) for label, target in zip(found, batch_y.tolist()))
    passed = missing == 0 and wrong == 0
    return Check("labels belong to their inputs", passed,
                 f"{wrong} of {len(found)} pairs carry another example's label"
                 + (f", {missing} inputs not in the data" if missing else ""))


def check_no_overlap(train_x, test_x) -> Check:
    """No test example is an exact copy of a training example (a duplicate in both sets makes
    the test score a memory test)."""
    seen = set(_row_keys(train_x))
    shared = sum(key in seen for key in _row_keys(test_x))
    return Check("train and test disjoint", shared == 0,
                 f"{shared} of {len(test_x)} test examples are copies of training examples")


# -- the model and the loss ---------------------------------------------------------------------------
def check_initial_loss(model, x, y, loss_fn, num_classes: int, tolerance: float = 0.25) -> Check:
    """Before training, a classifier knows nothing, so its cross-entropy should be close to that
    of a uniform guess, ln(num_classes), within `tolerance` of it, relative. Far below (or
    negative): the loss does not match the output layer. Far above: the initial logits are huge
    (unscaled inputs, a bad initialization)."""
    was_training = model.training
    model.eval()                                      # dropout off: the loss of the model itself
    with torch.no_grad():
        loss = float(loss_fn(model(x), y))
    model.train(was_training)
    expected = math.log(num_classes)
    passed = math.isfinite(loss) and abs(loss - expected) < tolerance * expected
    return Check("loss at initialization", passed, f"{loss:.3f} against ln({num_classes}) = {expected:.3f}")


def check_gradients(function, *shapes, seed: int = 0) -> Check:
    """A hand-written backward agrees with finite differences (torch.autograd.gradcheck, in
    float64, on random inputs of the given shapes)."""
    generator = torch.Generator().manual_seed(seed)
    inputs = [torch.randn(shape, generator=generator, dtype=torch.float64, requires_grad=True)
              for shape in shapes]
    try:
        torch.autograd.gradcheck(function, inputs, eps=1e-6, atol=1e-5)
        return Check("gradient check", True, "backward matches finite differences")
    except GradcheckError as error:
        return Check("gradient check", False,
                     "backward disagrees with finite differences (" + str(error).splitlines()[0].rstrip(",") + ")")


# -- training -----------------------------------------------------------------------------------------
def check_overfits_one_batch(make_model, make_optimizer, loss_fn, x, y, steps: int = 150) -> Check:
    """A fresh model must learn one small batch by heart: loss near zero, every example right.
    If it cannot, something between the loss and the weights is broken (the learning rate, the
    gradients, a frozen layer, a loss that does not match the outputs)."""
    model = make_model()
    optimizer = make_optimizer(model.parameters())
    model.train()
    for _ in range(steps):
        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        logits = model(x)
        final = float(torch.nn.functional.cross_entropy(logits, y))
        correct = (logits.argmax(dim=1) == y).float().mean().item()
    passed = math.isfinite(final) and correct == 1.0 and final < 0.05
    return Check("overfits one batch", passed,
                 f"cross-entropy {final:.3g}, accuracy {correct:.2f} after {steps} steps on {len(y)} examples")


def check_learning_rate(lr: float, model, train, optimizer, loss, batch_size: int = 64, device="cpu") -> Check:
    """The rate is below the bottom of the learning-rate range test (course_utils.lr_find, run
    on a copy of `model` with your data, loss and optimizer, a function parameters -> optimizer):
    beyond that rate each step makes the loss worse."""
    from .learning_rates import lr_find

    name = "learning rate below the range test's limit"
    try:
        range_test = lr_find(copy.deepcopy(model), train, optimizer=optimizer, loss=loss,
                             batch_size=batch_size, device=device)
    except (RuntimeError, ValueError) as error:       # a loss not finite even at tiny rates, or negative
        return Check(name, False, f"the range test could not run: {error}")
    limit = range_test.min_loss_lr
    return Check(name, lr <= limit,
                 f"lr {lr:.3g}; the range test's loss is lowest at {limit:.3g} (suggested {range_test.suggested_lr:.3g})")


def check_units_alive(diagnostics, max_dead: float = 0.5) -> Check:
    """No activation layer has lost most of its units: at the last step a Diagnostics callback
    recorded, every layer's share of dead units (zero slope for the whole batch) is below
    `max_dead` (catches rates so large, or inputs so unscaled, that units saturate for good)."""
    latest = diagnostics.latest("activation")
    worst = latest["dead"].idxmax()
    share = float(latest["dead"].max())
    return Check("units alive", share < max_dead, f"at most {share:.0%} of a layer's units dead ({worst})")


def check_evaluation_is_deterministic(predict, model, x) -> Check:
    """Two evaluations of the same inputs agree (catches dropout or BatchNorm left in training
    mode at evaluation: model.eval() forgotten). `predict(model, x)` is your evaluation code; the
    model is put in training mode first, as it is right after a training step."""
    model.train()
    first, second = predict(model, x), predict(model, x)
    passed = torch.equal(first, second)
    changed = (first != second).float().mean().item() if first.shape == second.shape else 1.0
    return Check("evaluation deterministic", passed,
                 "same outputs twice" if passed else f"{changed:.1%} of the outputs change between two calls")


__all__ = ["Check", "print_report", "check_input_statistics", "check_inputs_ignore_labels",
           "check_labels_match_images", "check_no_overlap", "check_initial_loss", "check_gradients",
           "check_overfits_one_batch", "check_learning_rate", "check_units_alive",
           "check_evaluation_is_deterministic"]
