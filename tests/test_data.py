"""Image sources: folders, npz, digits, torchvision names, and their one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nnfeat.data import ImageSet, as_rgb_uint8, load_images
from nnfeat.errors import NnfeatError

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message
    return message


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture
def class_folder(tmp_path: Path) -> Path:
    """cats/ (2 RGB 10x12), dogs/deep/ (1 grey 20x20) and a hidden folder that must be ignored."""
    rng = np.random.default_rng(0)
    write_png(tmp_path / "cats" / "a.png", rng.integers(0, 256, (10, 12, 3), dtype=np.uint8))
    write_png(tmp_path / "cats" / "b.jpg", rng.integers(0, 256, (10, 12, 3), dtype=np.uint8))
    write_png(tmp_path / "dogs" / "deep" / "c.png", np.full((20, 20), 200, dtype=np.uint8))
    write_png(tmp_path / ".thumbs" / "x.png", np.zeros((4, 4, 3), dtype=np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_folder_labels_from_subfolders_and_recursive(class_folder: Path):
    images = load_images(class_folder, size=(16, 16))
    assert len(images) == 3
    assert images.classes == ["cats", "dogs"]
    assert images.labels.tolist() == [0, 0, 1]
    array = images.images
    assert array.shape == (3, 16, 16, 3) and array.dtype == np.uint8
    assert (array[2] == 200).all()  # grey became RGB, resized without changing a flat image


def test_folder_default_size_is_first_image(class_folder: Path):
    images = load_images(class_folder)
    assert images.native_size == (10, 12)
    assert images.read([2]).shape == (1, 10, 12, 3)


def test_flat_folder_has_no_labels(tmp_path: Path):
    write_png(tmp_path / "one.png", np.zeros((8, 8, 3), dtype=np.uint8))
    write_png(tmp_path / "two.png", np.full((8, 8, 3), 255, dtype=np.uint8))
    images = load_images(tmp_path)
    assert images.labels is None and images.classes is None
    batch = next(images.iter_batches(4))
    assert batch.shape == (2, 3, 8, 8)
    assert batch[0].max() == 0 and batch[1].min() == 1


def test_iter_batches_order_size_and_range():
    rng = np.random.default_rng(1)
    array = rng.integers(0, 256, (7, 6, 6, 3), dtype=np.uint8)
    images = ImageSet(name="mem", array=array)
    batches = list(images.iter_batches(3))
    assert [len(b) for b in batches] == [3, 3, 1]
    together = torch.cat(batches)
    assert torch.equal(together, torch.from_numpy(array).permute(0, 3, 1, 2).float() / 255)
    resized = list(images.iter_batches(4, size=12, indices=[6, 0]))
    assert len(resized) == 1 and resized[0].shape == (2, 3, 12, 12)
    assert 0.0 <= resized[0].min() and resized[0].max() <= 1.0
    # a flat-coloured image keeps its colour through resizing
    flat = ImageSet(name="flat", array=np.full((1, 5, 5, 3), 128, dtype=np.uint8))
    assert torch.allclose(flat.tensors([0], 9), torch.full((1, 3, 9, 9), 128 / 255))


def test_npz_with_labels_classes_and_grey(tmp_path: Path):
    grey = np.arange(4 * 5 * 5, dtype=np.uint8).reshape(4, 5, 5)
    np.savez(tmp_path / "set.npz", images=grey, labels=np.array([1, 0, 1, 2]), classes=np.array(["a", "b", "c"]))
    images = load_images(tmp_path / "set.npz", limit=3)
    assert len(images) == 3
    assert images.images.shape == (3, 5, 5, 3)
    assert (images.images[..., 0] == grey[:3]).all() and (images.images[..., 2] == grey[:3]).all()
    assert images.labels.tolist() == [1, 0, 1] and images.classes == ["a", "b", "c"]
    assert images.label_name(2) == "c"


def test_npz_float_images_are_scaled(tmp_path: Path):
    np.savez(tmp_path / "f.npz", images=np.full((2, 3, 3, 3), 0.5, dtype=np.float32))
    assert (load_images(tmp_path / "f.npz").images == 128).all()


def test_npz_without_images_is_one_clear_line(tmp_path: Path):
    np.savez(tmp_path / "bad.npz", pixels=np.zeros((2, 4, 4, 3), dtype=np.uint8))
    with pytest.raises(NnfeatError) as excinfo:
        load_images(tmp_path / "bad.npz")
    message = one_line_error(excinfo)
    assert "no 'images' array" in message and "pixels" in message


def test_npz_bad_shapes_and_labels(tmp_path: Path):
    np.savez(tmp_path / "shape.npz", images=np.zeros((2, 4, 4, 2), dtype=np.uint8))
    with pytest.raises(NnfeatError) as excinfo:
        load_images(tmp_path / "shape.npz")
    assert "N×H×W×C" in one_line_error(excinfo)
    np.savez(tmp_path / "labels.npz", images=np.zeros((2, 4, 4, 3), dtype=np.uint8), labels=np.array([0, 1, 2]))
    with pytest.raises(NnfeatError) as excinfo:
        load_images(tmp_path / "labels.npz")
    assert "labels" in one_line_error(excinfo)


def test_corrupt_npz_is_one_clear_line(tmp_path: Path):
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 this is not a zip archive")
    with pytest.raises(NnfeatError) as excinfo:
        load_images(tmp_path / "broken.npz")
    assert "cannot read npz" in one_line_error(excinfo)


def test_missing_source_is_one_clear_line(tmp_path: Path):
    with pytest.raises(NnfeatError) as excinfo:
        load_images(tmp_path / "nowhere")
    message = one_line_error(excinfo)
    assert "not found" in message and "folder" in message and "digits" in message


def test_unreadable_image_file(tmp_path: Path):
    (tmp_path / "fake.png").write_bytes(b"not a png at all")
    with pytest.raises(NnfeatError) as excinfo:
        load_images(tmp_path / "fake.png")
    assert "cannot read image" in one_line_error(excinfo)
    # inside a folder, the broken file is named when it is read
    folder = tmp_path / "folder"
    write_png(folder / "good.png", np.zeros((4, 4, 3), dtype=np.uint8))
    (folder / "zbad.png").write_bytes(b"garbage")
    images = load_images(folder)
    with pytest.raises(NnfeatError) as excinfo:
        list(images.iter_batches(8))
    assert "zbad.png" in one_line_error(excinfo)


def test_empty_folder_and_wrong_file_type(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(NnfeatError) as excinfo:
        load_images(tmp_path / "empty")
    assert "no images" in one_line_error(excinfo)
    (tmp_path / "table.csv").write_text("a,b\n")
    with pytest.raises(NnfeatError) as excinfo:
        load_images(tmp_path / "table.csv")
    assert ".npz" in one_line_error(excinfo)


def test_digits():
    images = load_images("digits")
    assert len(images) == 1797
    assert images.images.shape == (1797, 8, 8, 3)
    assert images.images.max() == 255 and images.images.min() == 0
    assert sorted(set(images.labels.tolist())) == list(range(10))
    assert images.classes == [str(i) for i in range(10)]
    batch = next(images.iter_batches(5, size=32))
    assert batch.shape == (5, 3, 32, 32)


def test_torchvision_download_failure_is_one_clear_line(tmp_path: Path, monkeypatch):
    import torchvision.datasets

    class Offline:
        def __init__(self, root, download=False, **kwargs):
            raise RuntimeError("Dataset not found" if not download else "<urlopen error [Errno -2] Name unknown>")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Offline)
    monkeypatch.setenv("NNFEAT_HOME", str(tmp_path))
    with pytest.raises(NnfeatError) as excinfo:
        load_images("cifar10")
    message = one_line_error(excinfo)
    assert "could not download 'cifar10'" in message and str(tmp_path) in message


def test_torchvision_dataset_arrays_are_converted(tmp_path: Path, monkeypatch):
    import torchvision.datasets

    seen = {}

    class ChannelsFirst:  # SVHN-like: data (N, 3, H, W), labels, no class names
        def __init__(self, root, download=False, split="train"):
            seen.update(root=root, split=split, download=download)
            self.data = np.arange(2 * 3 * 4 * 4, dtype=np.uint8).reshape(2, 3, 4, 4)
            self.labels = np.array([3, 1])

    monkeypatch.setattr(torchvision.datasets, "SVHN", ChannelsFirst)
    monkeypatch.setenv("NNFEAT_HOME", str(tmp_path))
    images = load_images("svhn:train")
    assert seen["split"] == "train" and seen["download"] is False and seen["root"].startswith(str(tmp_path))
    assert images.images.shape == (2, 4, 4, 3)
    assert (images.images[1, :, :, 2] == np.arange(2 * 3 * 16).reshape(2, 3, 4, 4)[1, 2]).all()
    assert images.labels.tolist() == [3, 1] and images.classes == ["0", "1", "2", "3"]
    with pytest.raises(NnfeatError) as excinfo:
        load_images("svhn:valid")
    assert "svhn:train" in one_line_error(excinfo)


def test_as_rgb_uint8_drops_alpha():
    rgba = np.zeros((1, 2, 2, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    assert as_rgb_uint8(rgba, "x").shape == (1, 2, 2, 3)


def test_cifar_npz_from_shared():
    path = SHARED / "data" / "cifar10_test.npz"
    if not path.is_file():
        pytest.skip(f"shared CIFAR-10 test set not found at {path}")
    images = load_images(path, limit=20)
    assert images.images.shape == (20, 32, 32, 3)
    assert len(images.classes) == 10 and images.classes[3] == "cat"


def test_sample_is_seeded_in_source_order_and_checks_n():
    from nnfeat.data import load_images

    digits = load_images("digits")
    a, b = digits.sample(50, seed=3), digits.sample(50, seed=3)
    assert len(a) == 50 and np.array_equal(a.labels, b.labels) and np.array_equal(a.images, b.images)
    assert not np.array_equal(a.images, digits.sample(50, seed=4).images)
    assert digits.sample(None) is digits and digits.sample(len(digits)) is digits
    with pytest.raises(NnfeatError, match=rf"--n 5000 is more than the {len(digits)} images of 'digits'"):
        digits.sample(5000)
    with pytest.raises(NnfeatError, match="at least 1"):
        digits.sample(0)
