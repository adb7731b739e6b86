import gzip
import os

import pytest
import torch

import course_utils.data as data
from course_utils import (FASHION_MNIST_CLASSES, DatasetError, Standardize, TensorLoader,
                          fashion_mnist_loaders, load_fashion_mnist, make_moons,
                          make_polynomial_regression, make_spirals, normalization_stats,
                          train_val_split)


def test_fashion_mnist_has_the_documented_shape(fmnist):
    assert fmnist.train_images.shape == (60_000, 28, 28)
    assert fmnist.test_images.shape == (10_000, 28, 28)
    assert fmnist.train_images.dtype == torch.uint8
    assert fmnist.train_labels.dtype == torch.int64
    assert fmnist.classes == FASHION_MNIST_CLASSES and len(fmnist.classes) == 10
    # Fashion-MNIST is balanced: 6,000 training and 1,000 test images per class.
    assert torch.bincount(fmnist.train_labels).tolist() == [6000] * 10
    assert torch.bincount(fmnist.test_labels).tolist() == [1000] * 10
    assert 0 < fmnist.train_images.float().mean() < 255


def test_course_data_dir_is_searched_first(dataset_copy, monkeypatch):
    monkeypatch.setenv("COURSE_DATA_DIR", str(dataset_copy))
    assert load_fashion_mnist(download=False).folder == dataset_copy


def test_torchvision_layout_and_unpacked_files_are_found(dataset_copy, tmp_path):
    raw = tmp_path / "tv" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in data.FASHION_MNIST_FILES:
        (raw / name).write_bytes(gzip.decompress((dataset_copy / (name + ".gz")).read_bytes()))
    loaded = load_fashion_mnist(tmp_path / "tv", download=False)
    assert loaded.folder == raw and len(loaded.train_images) == 60_000


def test_corrupt_file_names_the_file_and_the_fix(dataset_copy):
    target = dataset_copy / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(target.read_bytes()))
    raw[100] = (raw[100] + 1) % 10  # one wrong label
    target.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DatasetError) as err:
        load_fashion_mnist(dataset_copy, download=False)
    message = str(err.value)
    assert "t10k-labels-idx1-ubyte.gz" in message and "corrupt" in message
    assert "course data" in message and "rm '" in message


def test_truncated_gzip_is_reported_not_crashed(dataset_copy):
    target = dataset_copy / "train-labels-idx1-ubyte.gz"
    target.write_bytes(target.read_bytes()[:1000])
    with pytest.raises(DatasetError, match="cannot be read.*course data"):
        load_fashion_mnist(dataset_copy, download=False)


def test_debian_copy_damaged_suggests_reinstall():
    assert "apt-get install --reinstall dataset-fashion-mnist" in data._fix_for(
        data.DEBIAN_DIR / "train-images-idx3-ubyte.gz")


def test_missing_dataset_says_where_it_looked_and_how_to_fix(no_dataset_anywhere):
    with pytest.raises(DatasetError) as err:
        load_fashion_mnist(download=False)
    message = str(err.value)
    assert "not found" in message
    assert str(no_dataset_anywhere / "empty-cache") in message
    assert "apt-get install -y dataset-fashion-mnist" in message
    assert "course data" in message and "COURSE_DATA_DIR" in message


def test_failed_download_leaves_no_partial_files(no_dataset_anywhere, monkeypatch):
    import torchvision.datasets

    class OfflineFashionMNIST:
        def __init__(self, root, train=True, download=False):
            partial = os.path.join(root, "FashionMNIST", "raw")
            os.makedirs(partial, exist_ok=True)
            open(os.path.join(partial, "train-images-idx3-ubyte.gz"), "wb").write(b"half")
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: no network")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", OfflineFashionMNIST)
    with pytest.raises(DatasetError, match="download failed too.*no network"):
        load_fashion_mnist()
    cache = no_dataset_anywhere / "empty-cache"
    assert list(cache.rglob("*")) == []  # the half-written file went with its temp folder


def test_copy_to_cache_is_verified_and_complete(dataset_copy, tmp_path):
    target = data.copy_to_cache(dataset_copy, tmp_path / "cache")
    assert sorted(p.name for p in target.iterdir()) == sorted(n + ".gz" for n in data.FASHION_MNIST_FILES)
    assert load_fashion_mnist(target, download=False).folder == target


def test_split_is_stratified_seeded_and_disjoint(fmnist):
    images, labels = fmnist.train_images, fmnist.train_labels
    (x_tr, y_tr), (x_val, y_val) = train_val_split(images, labels, val_fraction=0.2, seed=1)
    assert len(y_tr) == 48_000 and len(y_val) == 12_000
    assert torch.bincount(y_val).tolist() == [1200] * 10  # every class keeps its share
    _, (_, y_val2) = train_val_split(images, labels, val_fraction=0.2, seed=1)
    assert torch.equal(y_val, y_val2)
    (_, _), (x_val3, _) = train_val_split(images, labels, val_fraction=0.2, seed=2)
    assert not torch.equal(x_val, x_val3)
    # disjoint: no validation image is also a training image (compare by index through a tag)
    tags = torch.arange(len(labels))
    (t_tr, _), (t_val, _) = train_val_split(tags, labels, val_fraction=0.2, seed=1)
    assert len(set(t_tr.tolist()) & set(t_val.tolist())) == 0
    assert len(t_tr) + len(t_val) == len(labels)


def test_split_rejects_a_bad_fraction(fmnist):
    with pytest.raises(ValueError, match="between 0 and 1"):
        train_val_split(fmnist.train_images, fmnist.train_labels, val_fraction=1.5)


def test_normalization_stats_come_from_the_given_split(fmnist):
    (x_tr, _), (x_val, _) = train_val_split(fmnist.train_images, fmnist.train_labels, seed=0)
    mean, std = normalization_stats(x_tr)
    assert abs(mean.item() - 0.286) < 0.005 and abs(std.item() - 0.353) < 0.005
    x = x_tr.float() / 255
    torch.testing.assert_close(mean, x.mean())
    pixel_mean, pixel_std = normalization_stats(x_tr, per_pixel=True)
    assert pixel_mean.shape == (28, 28) and (pixel_std > 0).all()
    standardized = Standardize(mean, std)(x_tr[:4096])
    assert standardized.shape == (4096, 1, 28, 28)
    assert abs(standardized.mean().item()) < 0.05 and abs(standardized.std().item() - 1) < 0.05


def test_tensor_loader_covers_every_example_once_per_epoch():
    tags = torch.arange(1000)
    loader = TensorLoader(tags, tags * 2, batch_size=64, shuffle=True, seed=3, device="cpu")
    assert len(loader) == 16
    seen = []
    for x, y in loader:
        assert torch.equal(y, x * 2)
        seen.append(x)
    order = torch.cat(seen)
    assert sorted(order.tolist()) == list(range(1000)) and not torch.equal(order, tags)
    second = torch.cat([x for x, _ in loader])
    assert not torch.equal(order, second)  # a new order every epoch


def test_tensor_loader_batches_drop_last_and_transform():
    x = torch.arange(10, dtype=torch.float32)
    sizes = [len(b[0]) for b in TensorLoader(x, batch_size=4, device="cpu")]
    assert sizes == [4, 4, 2]
    assert len(TensorLoader(x, batch_size=4, drop_last=True, device="cpu")) == 2
    doubled = [b[0] for b in TensorLoader(x, batch_size=5, transform=lambda t: t * 2, device="cpu")]
    assert torch.equal(torch.cat(doubled), x * 2)


def test_tensor_loader_state_restores_the_shuffle_order():
    tags = torch.arange(100)
    loader = TensorLoader(tags, batch_size=10, shuffle=True, seed=0, device="cpu")
    next(iter(loader))
    state = loader.state_dict()
    expected = torch.cat([b[0] for b in loader])
    other = TensorLoader(tags, batch_size=10, shuffle=True, seed=99, device="cpu")
    other.load_state_dict(state)
    assert torch.equal(torch.cat([b[0] for b in other]), expected)


def test_tensor_loader_rejects_bad_input():
    with pytest.raises(ValueError, match="same length"):
        TensorLoader(torch.zeros(5), torch.zeros(4))
    with pytest.raises(ValueError, match="batch_size"):
        TensorLoader(torch.zeros(5), batch_size=0)
    with pytest.raises(ValueError, match="Unknown device"):
        TensorLoader(torch.zeros(5), device="gpu")


def test_fashion_mnist_loaders_normalize_with_training_statistics():
    train, val, test = fashion_mnist_loaders(batch_size=512, device="cpu")
    assert train.num_examples == 50_000 and val.num_examples == 10_000 and test.num_examples == 10_000
    x, y = next(iter(train))
    assert x.shape == (512, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert train.transform.mean == val.transform.mean == test.transform.mean


def test_synthetic_sets():
    x, y = make_spirals(n_per_class=50, n_classes=4, seed=0)
    assert x.shape == (200, 2) and torch.bincount(y).tolist() == [50] * 4
    assert torch.equal(make_spirals(50, 4, seed=0)[0], x)
    x, y = make_moons(100, seed=0)
    assert x.shape == (100, 2) and set(y.tolist()) == {0, 1}
    x, y = make_polynomial_regression(20, coefficients=(1.0, 2.0), noise=0.0, seed=0)
    torch.testing.assert_close(y, 1.0 + 2.0 * x)
    assert x.min() >= -1 and x.max() <= 1


def test_damaged_deflate_stream_is_a_dataset_error_that_names_the_fix(dataset_copy):
    target = dataset_copy / "t10k-labels-idx1-ubyte.gz"
    damaged = bytearray(target.read_bytes())
    header = 10 + (damaged.index(0, 10) + 1 - 10 if damaged[3] & 0x08 else 0)  # skip a stored name
    damaged[header] = 0xFF  # the first deflate block now has the reserved block type 3
    target.write_bytes(bytes(damaged))
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte.gz cannot be read.*Fix: delete it"):
        load_fashion_mnist(dataset_copy, download=False)
