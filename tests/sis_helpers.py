"""Shared test helpers for the SIS and activation-maximisation tests: a digit classifier.

scikit-learn's ``load_digits`` (1797 8x8 grey digits, 10 classes, values 0..16) scaled to
[0, 1]; a ``small_cnn`` (width 8) trained for a few epochs with
``xaiscope.models.train.train``. Cached per process, so all test files share one model.
"""

from __future__ import annotations

import functools

import pytest
import torch

from xaiscope.data import Dataset


@functools.lru_cache(maxsize=None)
def digits() -> tuple[Dataset, Dataset]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    ds = Dataset(
        x=x, y=y, ids=[f"d{i:04d}" for i in range(len(y))], classes=[str(c) for c in range(10)], source="sklearn-digits"
    )
    n_train = 1400
    return ds.subset(range(n_train)), ds.subset(range(n_train, len(ds)))


@functools.lru_cache(maxsize=None)
def digits_model():
    """(model, train, test, test accuracy) — small_cnn width 8, 6 epochs, seed 0 (about 88% test accuracy)."""
    from xaiscope.models import build
    from xaiscope.models.train import train

    train_ds, test_ds = digits()
    torch.manual_seed(0)
    model = build("small_cnn", in_channels=1, num_classes=10, width=8)
    res = train(model, train_ds, test=test_ds, epochs=6, lr=5e-3, batch_size=32, seed=0, progress=False)
    model = res.model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, train_ds, test_ds, res.test_acc


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Pin torch to one thread per module: tiny convolutions run ~10x faster on one thread
    when the 2 cores are shared. Import it into a test module to use it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
