"""Shared test fixtures.

* Every test session gets its own empty ``NNFEAT_HOME`` (a pytest temp dir), so tests never read or
  write ``~/.cache/nnfeat``; ``NNFEAT_WEIGHTS_PATH`` is set to ``../shared/models`` when that exists.
* ``shared_dir`` is the read-only ``../shared`` folder next to the repo; tests that need it skip without it.
* torch runs on one CPU thread (override with ``NNFEAT_TEST_THREADS=N``; subprocesses get
  ``OMP_NUM_THREADS`` unless it is set already): results then do not depend on
  the core count, and on a busy machine small convolutions are many times faster than with threads
  competing for cores (a GoogLeNet forward pass: 0.01 s instead of 1.5 s on a loaded 2-core box).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

SHARED_DIR = Path(__file__).resolve().parents[1].parent / "shared"
_ENV_KEYS = ("NNFEAT_HOME", "NNFEAT_WEIGHTS_PATH", "OMP_NUM_THREADS")


@pytest.fixture(scope="session", autouse=True)
def nnfeat_test_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh NNFEAT_HOME for the whole session (weights downloaded or trained by tests land here)."""
    saved = {key: os.environ.get(key) for key in _ENV_KEYS}
    threads = torch.get_num_threads()
    test_threads = int(os.environ.get("NNFEAT_TEST_THREADS", "1"))
    torch.set_num_threads(test_threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(test_threads))  # for subprocesses (CLI tests)
    home = tmp_path_factory.mktemp("nnfeat_home")
    os.environ["NNFEAT_HOME"] = str(home)
    models = SHARED_DIR / "models"
    os.environ["NNFEAT_WEIGHTS_PATH"] = str(models) if models.is_dir() else ""
    try:
        yield home
    finally:
        torch.set_num_threads(threads)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` relative to the repo root; skips the test if it is absent."""
    if not (SHARED_DIR / "models").is_dir() or not (SHARED_DIR / "data").is_dir():
        pytest.skip(f"shared test material not found at {SHARED_DIR} (models/ and data/ needed)")
    return SHARED_DIR


@pytest.fixture(scope="session")
def cifar_resnet20(shared_dir: Path):
    """The trained CIFAR-10 ResNet-20 (from ../shared/models via NNFEAT_WEIGHTS_PATH), CPU, eval mode."""
    from nnfeat.models import load_model

    return load_model("cifar10-resnet20")


@pytest.fixture(scope="session")
def cifar_subset(shared_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Every 10th CIFAR-10 test image (1,000, 100 per class): images (1000, 3, 32, 32) in [0,1], labels (1000,)."""
    import numpy as np

    with np.load(shared_dir / "data" / "cifar10_test.npz") as data:
        images = torch.from_numpy(data["images"][::10]).permute(0, 3, 1, 2).float().div(255.0)
        labels = torch.from_numpy(data["labels"][::10]).long()
    return images.contiguous(), labels


@pytest.fixture(scope="session")
def digits_model():
    """The trained ``digits-cnn`` (trained once per session into the session's NNFEAT_HOME)."""
    from nnfeat.models import load_model

    return load_model("digits-cnn")
