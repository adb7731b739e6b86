"""The training playbook (lesson 10): each planted bug of the broken script is caught by the check
made for it, the fixed script passes every check, and each check fails on a bug of its own kind
outside the script too."""

import pytest
import torch
import torch.nn.functional as F

import course_utils as cu
from course_utils import playbook
from course_utils.broken_script import BUGS, BrokenScript, SoftplusByHand, check_script

TINY = (1, 8)                                        # trousers against bags, lesson 10's tiny task

CAUGHT_BY = {
    "raw_pixels": "inputs standardized",
    "label_column": "inputs independent of labels",
    "shuffled_pairs": "labels belong to their inputs",
    "wrong_backward": "gradient check",
    "nll_on_logits": "loss at initialization",
    "lr_too_high": "learning rate below the range test's limit",
    "no_eval": "evaluation deterministic",
}


def tiny_script(fmnist, bugs, classes=TINY):
    return BrokenScript(bugs=bugs, classes=classes, n_train=2000, n_val=500, data=fmnist)


def failed(checks):
    return {check.name for check in checks if not check.passed}


def test_every_bug_has_a_check(fmnist):
    assert set(CAUGHT_BY) == set(BUGS)


def test_the_fixed_script_passes_every_check_and_learns(fmnist):
    script = tiny_script(fmnist, ())
    assert failed(check_script(script)) == set()
    assert script.run()["test_acc"] > 0.98


@pytest.mark.parametrize("bug", sorted(BUGS))
def test_each_bug_alone_fails_its_check(fmnist, bug):
    assert CAUGHT_BY[bug] in failed(check_script(tiny_script(fmnist, {bug})))


def test_a_rate_far_too_high_kills_units_on_ten_classes(fmnist):
    checks = check_script(tiny_script(fmnist, {"lr_too_high"}, classes=range(10)))
    assert {"units alive", "learning rate below the range test's limit"} <= failed(checks)


def test_unknown_bug_names_are_refused(fmnist):
    with pytest.raises(ValueError, match="planted bugs are"):
        BrokenScript(bugs={"typo"}, data=fmnist)


def test_a_duplicate_across_splits_is_found(fmnist):
    train, test = fmnist.train_images[:2000], fmnist.test_images[:500].clone()
    assert playbook.check_no_overlap(train, test).passed
    test[123] = train[45]
    check = playbook.check_no_overlap(train, test)
    assert not check.passed and "1 of 500" in check.detail


def test_initial_loss_check_flags_huge_logits():
    torch.manual_seed(0)
    x, y = torch.randn(256, 20), torch.randint(0, 10, (256,))
    model = cu.mlp(in_features=20, hidden=(32,), out_features=10)
    assert playbook.check_initial_loss(model, x, y, F.cross_entropy, 10).passed
    assert not playbook.check_initial_loss(model, 100 * x, y, F.cross_entropy, 10).passed
    model.train()
    playbook.check_initial_loss(model, x, y, F.cross_entropy, 10)
    assert model.training, "the check restores the train flag"


def test_gradient_check_separates_right_and_wrong_backwards():
    assert playbook.check_gradients(lambda t: SoftplusByHand.apply(t, False), (6, 4)).passed
    assert not playbook.check_gradients(lambda t: SoftplusByHand.apply(t, True), (6, 4)).passed


def test_overfitting_one_batch_fails_when_labels_cannot_be_learned():
    torch.manual_seed(0)
    x, y = torch.randn(32, 10), torch.randint(0, 3, (32,))
    make_model = lambda: cu.mlp(in_features=10, hidden=(64,), out_features=3)       # noqa: E731
    adam = lambda params: torch.optim.Adam(params, lr=1e-2)                        # noqa: E731
    assert playbook.check_overfits_one_batch(make_model, adam, F.cross_entropy, x, y).passed
    frozen = lambda params: torch.optim.SGD(params, lr=0.0)                        # noqa: E731
    assert not playbook.check_overfits_one_batch(make_model, frozen, F.cross_entropy, x, y).passed


def test_range_test_refuses_a_negative_loss_with_a_clear_message(spirals):
    model = cu.mlp(in_features=2, hidden=(16,), out_features=3)
    with pytest.raises(ValueError, match="negative"):
        cu.lr_find(model, spirals, loss=F.nll_loss, batch_size=64, device="cpu")
