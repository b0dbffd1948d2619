"""Image sources: one loader for every command that takes ``--images``.

``load_images(source)`` understands:

* a folder of images, searched recursively. Files are opened lazily, batch by batch, so a folder of
  100 k files costs only its file list in memory. When every image lies in a sub-folder, the
  top-level sub-folder names are the class names and give each image its label;
* a single image file (one image);
* an ``.npz`` file with an ``images`` array (N, H, W, C) or (N, H, W) uint8 (float arrays in [0,1]
  are accepted too) and optional ``labels`` (N,) and ``classes`` arrays;
* ``digits``: scikit-learn's bundled 8x8 handwritten digits (1 797 images, labels 0-9);
* a torchvision dataset name (``cifar10``, ``cifar100``, ``mnist``, ``fashionmnist``, ``kmnist``,
  ``svhn``, ``stl10``), optionally with a split (``cifar10:train``; default ``test``). It is
  downloaded into ``$NNFEAT_HOME/datasets`` (default ``~/.cache/nnfeat/datasets``) when missing.

Every image comes out as RGB uint8 (grey is repeated, alpha dropped). :meth:`ImageSet.iter_batches`
gives float tensors (B, 3, H, W) in [0, 1] at the size the caller asks for (the model's input size),
fitted by ``ImageSet.fit`` (:mod:`nnfeat.imagefit`). Every failure is a one-line :class:`NnfeatError`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.datasets as tvd
from PIL import Image, UnidentifiedImageError

from nnfeat.errors import NnfeatError, shorten
from nnfeat.imagefit import FIT_POLICIES, Size, fit_image, same_shape, survey_files  # noqa: F401 (re-exported)
from nnfeat.io import nnfeat_home

#: File suffixes a folder source picks up (lower case).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")

#: torchvision dataset names -> (class name, how the split is passed: "train" flag or "split" string).
TORCHVISION_DATASETS = {"cifar10": ("CIFAR10", "train"), "cifar100": ("CIFAR100", "train"), "mnist": ("MNIST", "train"),
                        "fashionmnist": ("FashionMNIST", "train"), "kmnist": ("KMNIST", "train"),
                        "svhn": ("SVHN", "split"), "stl10": ("STL10", "split")}
#: Without class names, labels are ids 0..K-1 with K at most this or the image count (more: sparse ids, e.g. keys)
MAX_CLASS_IDS = 1000


# ------------------------------------------------------------------------------------------------
@dataclass
class ImageSet:
    """N images with optional labels, read either from memory or lazily from files.

    Exactly one of ``array`` (N, H, W, 3) uint8 and ``files`` (N paths) is set.

    Attributes:
        name: where the images came from (shown in outputs).
        labels: (N,) int64 labels or None.
        classes: class names, index-aligned with ``labels``, or None.
        size: (H, W) to which file images are resized when read; None means the first file's size.
        fit: how an image of another aspect ratio than ``size`` is fitted (``pad``, ``crop``, ``stretch``).
        root: the folder of a folder or file source (:attr:`names` are relative to it), else None.
    """

    name: str
    array: np.ndarray | None = None
    files: list[Path] | None = None
    labels: np.ndarray | None = None
    classes: list[str] | None = None
    size: Size | None = None
    #: (n, seed) when this set is a seeded sample of a larger source (:meth:`sample`), else None
    drawn: tuple[int, int] | None = None
    #: (N,) int64 indices of these images in the source they were taken from (:meth:`subset`), or None: 0..N-1
    origin: np.ndarray | None = None
    fit: str = "pad"
    root: Path | None = None
    _first_size: Size | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.array) if self.array is not None else len(self.files or [])

    # -- reading ------------------------------------------------------------------------------------
    @property
    def native_size(self) -> Size:
        """(H, W) of the images as stored (for files: ``size`` if set, else the first file's size)."""
        if self.array is not None:
            return tuple(self.array.shape[1:3])
        if self.size is not None:
            return self.size
        if self._first_size is None:
            self._first_size = _read_file(self.files[0], None).shape[:2]
        return self._first_size

    @property
    def images(self) -> np.ndarray:
        """All images as one (N, H, W, 3) uint8 array (reads every file of a folder source)."""
        if self.array is not None:
            return self.array
        return self.read(range(len(self)))

    def read(self, indices: Sequence[int] | np.ndarray, size: Size | None = None) -> np.ndarray:
        """The images at ``indices`` as (B, H, W, 3) uint8; file images are resized to ``size``/``native_size``."""
        indices = np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices, dtype=np.int64)
        if self.array is not None:
            if size is None or same_shape(self.native_size, size):
                return self.array[indices]
            return np.stack([np.asarray(fit_image(Image.fromarray(a), size, self.fit)) for a in self.array[indices]])
        target = tuple(size) if size is not None else self.native_size
        out = np.empty((len(indices), *target, 3), dtype=np.uint8)
        for row, index in enumerate(indices):
            out[row] = _read_file(self.files[int(index)], target, self.fit)
        return out

    def tensors(self, indices: Sequence[int] | np.ndarray, size: Size | int | None = None,
                device: torch.device | str | None = None) -> torch.Tensor:
        """The images at ``indices`` as float (B, 3, H, W) in [0, 1], resized to ``size`` if given."""
        size = (size, size) if isinstance(size, int) else (tuple(size) if size is not None else None)
        batch = torch.from_numpy(self.read(indices, size)).to(device).permute(0, 3, 1, 2).float().div_(255.0)
        if size is not None and tuple(batch.shape[-2:]) != size:
            antialias = size[0] < batch.shape[-2] or size[1] < batch.shape[-1]
            batch = F.interpolate(batch, size=size, mode="bilinear", align_corners=False, antialias=antialias)
            batch = batch.clamp_(0.0, 1.0)
        return batch.contiguous()

    def iter_batches(self, batch_size: int, size: Size | int | None = None, *,
                     indices: Sequence[int] | np.ndarray | None = None,
                     device: torch.device | str | None = None) -> Iterator[torch.Tensor]:
        """Yield float tensors (B, 3, H, W) in [0, 1] of ``batch_size`` images (the last may be smaller).

        Args:
            batch_size: images per batch.
            size: (H, W) or an int to resize every image to (usually the model's input size).
            indices: which images, in this order (default: all, in order).
            device: where the tensors go.
        """
        if batch_size < 1:
            raise NnfeatError(f"batch size must be at least 1, got {batch_size}")
        order = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64)
        for start in range(0, len(order), batch_size):
            yield self.tensors(order[start:start + batch_size], size, device)

    def subset(self, indices: Sequence[int] | np.ndarray) -> "ImageSet":
        """A new ImageSet with only the images at ``indices`` (labels and classes kept)."""
        indices = np.asarray(indices, dtype=np.int64)
        return ImageSet(name=self.name, array=self.array[indices] if self.array is not None else None,
                        files=[self.files[i] for i in indices] if self.files is not None else None,
                        labels=self.labels[indices] if self.labels is not None else None, classes=self.classes,
                        size=self.size, origin=self.source_indices[indices], fit=self.fit, root=self.root)

    def sample(self, n: int | None, seed: int = 0) -> "ImageSet":
        """``n`` images drawn without replacement from ``(seed)`` (in source order), or all when ``n`` is None or
        the source has exactly ``n``; a one-line error when ``n`` is larger than the source."""
        if n is None or n == len(self):
            return self
        if n < 1:
            raise NnfeatError(f"--n must be at least 1; got {n}")
        if n > len(self):
            raise NnfeatError(f"--n {n} is more than the {len(self)} images of '{self.name}': use --n {len(self)} or less")
        generator = torch.Generator().manual_seed(int(seed))
        sample = self.subset(np.sort(torch.randperm(len(self), generator=generator)[:n].numpy()))
        sample.drawn = (int(n), int(seed))
        return sample

    def command_options(self) -> dict:
        """How a recorded command names this set: ``images`` (the source) and ``n`` / ``seed`` when it is a
        seeded sample (``seed`` left out when 0, the default), ``fit`` when not the default."""
        n, seed = self.drawn if self.drawn is not None else (None, 0)
        return {"images": self.name, "n": n, "seed": seed or None, "fit": None if self.fit == "pad" else self.fit}

    @property
    def source_indices(self) -> np.ndarray:
        """(N,) int64: each image's index in the original source (0..N-1 unless this set is a subset)."""
        return self.origin if self.origin is not None else np.arange(len(self), dtype=np.int64)

    @property
    def names(self) -> list[str] | None:
        """Each image's path relative to the source folder (``cat/003.png``) for folder and file sources, else None."""
        return None if self.files is None or self.root is None else [p.relative_to(self.root).as_posix() for p in self.files]

    def survey(self, size: Size) -> dict:
        """``{"fitted": images of another aspect ratio than ``size`` (H, W), "grey": files, "colour": files}``."""
        if self.array is not None:
            return {"fitted": 0 if same_shape(self.native_size, size) else len(self), "grey": 0, "colour": 0}
        return survey_files(self.files, size, _read_file)

    def label_name(self, label: int) -> str:
        """The class name of ``label`` when known, else the number as text."""
        if self.classes is not None and 0 <= label < len(self.classes):
            return str(self.classes[label])
        return str(label)


# ------------------------------------------------------------------------------------------------
def load_images(source: str | os.PathLike, *, limit: int | None = None, size: Size | int | None = None) -> ImageSet:
    """Open an image source (see the module docstring) and return an :class:`ImageSet`.

    Args:
        source: a folder, an image file, an ``.npz`` file, ``digits`` or a torchvision dataset name.
        limit: keep only the first ``limit`` images.
        size: for folder sources, the (H, W) every file is resized to (default: the first file's size).
    """
    text = str(source)
    shown = shorten(text)
    path = Path(text).expanduser()
    try:
        is_dir, is_file = path.is_dir(), path.is_file()
    except (OSError, ValueError):  # a name no file system holds (too long, NUL): not a path
        is_dir = is_file = False
    if is_dir:
        images = _from_folder(path)
    elif is_file:
        if path.suffix.lower() == ".npz":
            images = _from_npz(path)
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            images = ImageSet(name=str(path), files=[path], root=path.parent)
            _read_file(path, None)  # fail now, with a clear line, if unreadable
        else:
            raise NnfeatError(f"cannot read images from '{shown}': expected a folder, an .npz file or an image file "
                              f"({', '.join(IMAGE_SUFFIXES)})")
    elif text.lower() == "digits":
        images = _from_digits()
    elif text.lower().split(":", 1)[0] in TORCHVISION_DATASETS:
        images = _from_torchvision(text.lower())
    else:
        raise NnfeatError(f"image source '{shown}' not found: expected a folder, an .npz file, 'digits' or a dataset name "
                          f"({', '.join(TORCHVISION_DATASETS)}, optionally with :train or :test)")
    if len(images) == 0:
        raise NnfeatError(f"image source '{shown}' holds no images")
    if size is not None:
        images.size = (size, size) if isinstance(size, int) else tuple(size)
    if limit is not None:
        if limit < 1:
            raise NnfeatError(f"--limit must be at least 1, got {limit}")
        images = images.subset(np.arange(min(limit, len(images))))
    return images


# -- folders and files ---------------------------------------------------------------------------
def _from_folder(root: Path) -> ImageSet:
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise NnfeatError(f"no images in folder '{root}': expected files ending in {', '.join(IMAGE_SUFFIXES)}")
    tops = [p.relative_to(root).parts for p in files]
    labels = classes = None
    if all(len(parts) > 1 for parts in tops):
        classes = sorted({parts[0] for parts in tops})
        index = {name: i for i, name in enumerate(classes)}
        labels = np.array([index[parts[0]] for parts in tops], dtype=np.int64)
    return ImageSet(name=str(root), files=files, labels=labels, classes=classes, root=root)


def _read_file(path: Path, size: Size | None, fit: str = "pad") -> np.ndarray:
    """One image file -> (H, W, 3) uint8, fitted to ``size`` (H, W) if given (:func:`fit_image`)."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if size is not None:
                image = fit_image(image, size, fit)
            return np.asarray(image, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise NnfeatError(f"cannot read image '{path}': {type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'unreadable'}"
                          ) from None


# -- arrays --------------------------------------------------------------------------------------
def as_rgb_uint8(images: np.ndarray, what: str) -> np.ndarray:
    """(N,H,W), (N,H,W,1), (N,H,W,3) or (N,H,W,4) uint8 or float [0,1] -> (N,H,W,3) uint8."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise NnfeatError(f"{what}: images must be N×H×W×C with C 1, 3 or 4 (or N×H×W); got shape {images.shape}")
    if images.dtype != np.uint8:
        images = _uint8_from(images, what)
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    elif images.shape[-1] == 4:
        images = images[..., :3]
    return np.ascontiguousarray(images)


def _uint8_from(images: np.ndarray, what: str) -> np.ndarray:
    """Integer images in 0..255 or float images in [0, 1] -> uint8; a one-line error for anything else (a float
    array in 0..255, out-of-range or non-finite values, a non-numeric dtype) instead of a silent saturation."""
    if images.dtype == np.bool_ or not np.issubdtype(images.dtype, np.number) or np.iscomplexobj(images):
        raise NnfeatError(f"{what}: images must be uint8 0..255 (or float in [0, 1]); got dtype {images.dtype}")
    if images.size == 0:
        return images.astype(np.uint8)
    if np.issubdtype(images.dtype, np.integer):
        low, high = int(images.min()), int(images.max())
        if low < 0 or high > 255:
            raise NnfeatError(f"{what}: {images.dtype} images must lie in 0..255 (uint8); got values {low}..{high}")
        return images.astype(np.uint8)
    if not np.isfinite(images).all():
        raise NnfeatError(f"{what}: {images.dtype} images hold NaN or Inf; expected finite values in [0, 1]")
    low, high = float(images.min()), float(images.max())
    if high > 1.0 and high <= 255.0 and low >= 0.0:
        raise NnfeatError(f"{what}: {images.dtype} images range over {low:.3g}..{high:.3g}, which looks like 0..255; "
                          "float images must lie in [0, 1]: divide by 255 or store uint8")
    if low < 0.0 or high > 1.0:
        raise NnfeatError(f"{what}: {images.dtype} images range over {low:.3g}..{high:.3g}; float images must lie in "
                          "[0, 1] (or store uint8 0..255)")
    return np.round(images.astype(np.float64) * 255.0).astype(np.uint8)


def _labels_and_classes(labels, classes, n: int, what: str) -> tuple[np.ndarray | None, list[str] | None]:
    """(N,) int64 class ids 0..K-1 and the class names; one line naming bad labels (negative, sparse ids)."""
    classes = None if classes is None else [str(c) for c in np.asarray(classes).reshape(-1).tolist()]
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if len(labels) != n or not np.issubdtype(labels.dtype, np.integer):
            raise NnfeatError(f"{what}: labels must be {n} integers (one per image); got {labels.dtype} × {len(labels)}")
        labels = labels.astype(np.int64)
        k = len(classes) if classes is not None else max(MAX_CLASS_IDS, n)
        bad = np.flatnonzero((labels < 0) | (labels >= k))
        if len(bad):
            values = np.unique(labels[bad])
            accepted = f"one per name of its {k} classes" if classes is not None else f"K at most {k} without names"
            raise NnfeatError(f"{what}: labels {', '.join(map(str, values[:3]))}{', …' if len(values) > 3 else ''} ("
                              f"{len(bad)} of {n} images, first at image {bad[0]}) are not class ids 0..K-1 ({accepted}): "
                              "renumber them, e.g. numpy.unique(labels, return_inverse=True)")
    return labels, classes


def _from_npz(path: Path) -> ImageSet:
    what = f"npz '{path}'"
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = list(npz.keys())
            if "images" not in keys:
                raise NnfeatError(f"{what} has no 'images' array (keys: {', '.join(keys) or 'none'}); "
                                  "expected images N×H×W×C uint8, optional labels and classes")
            images = npz["images"]
            labels = npz["labels"] if "labels" in keys else None
            classes = npz["classes"] if "classes" in keys else None
    except NnfeatError:
        raise
    except Exception as err:  # zipfile.BadZipFile, ValueError (pickled arrays), OSError ...
        raise NnfeatError(f"cannot read {what}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'unreadable'}"
                          ) from None
    images = as_rgb_uint8(images, what)
    labels, classes = _labels_and_classes(labels, classes, len(images), what)
    return ImageSet(name=str(path), array=images, labels=labels, classes=classes)


def _from_digits() -> ImageSet:
    from sklearn.datasets import load_digits  # lazy: scikit-learn's datasets load in ~1 s; only this source needs them

    digits = load_digits()
    grey = np.clip(np.round(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)  # values 0..16
    return ImageSet(name="digits", array=as_rgb_uint8(grey, "digits"), labels=digits.target.astype(np.int64),
                    classes=[str(i) for i in range(10)])


# -- torchvision ---------------------------------------------------------------------------------
def _from_torchvision(spec: str) -> ImageSet:
    name, _, split = spec.partition(":")
    split = split or "test"
    if split not in ("train", "test"):
        raise NnfeatError(f"unknown split '{split}' in '{spec}': use {name}:train or {name}:test")
    cls_name, split_kind = TORCHVISION_DATASETS[name]
    root = nnfeat_home() / "datasets" / name
    kwargs = {"train": split == "train"} if split_kind == "train" else {"split": split}
    dataset_cls = getattr(tvd, cls_name)
    dataset = None
    try:
        dataset = dataset_cls(str(root), download=False, **kwargs)
    except Exception:  # not there yet (each dataset raises its own type): try downloading
        pass
    if dataset is None:
        try:
            root.mkdir(parents=True, exist_ok=True)
            dataset = dataset_cls(str(root), download=True, **kwargs)
        except Exception as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise NnfeatError(f"could not download '{name}' into {root} ({reason}); without network, pass a folder "
                              "of images or an .npz file instead, or set NNFEAT_HOME to where it was downloaded") from None
    return _dataset_to_imageset(dataset, f"{name}:{split}")


def _dataset_to_imageset(dataset, name: str) -> ImageSet:
    """torchvision dataset with ``data`` and ``targets``/``labels`` arrays -> in-memory ImageSet."""
    data = dataset.data
    data = data.numpy() if torch.is_tensor(data) else np.asarray(data)
    if data.ndim == 4 and data.shape[1] in (1, 3) and data.shape[-1] not in (1, 3):  # SVHN/STL10: N,C,H,W
        data = data.transpose(0, 2, 3, 1)
    labels = getattr(dataset, "targets", None)
    if labels is None:
        labels = getattr(dataset, "labels", None)
    labels = None if labels is None else (labels.numpy() if torch.is_tensor(labels) else np.asarray(labels))
    classes = getattr(dataset, "classes", None)
    if classes is None and labels is not None:
        classes = [str(i) for i in range(int(labels.max()) + 1)]
    images = as_rgb_uint8(data, name)
    labels, classes = _labels_and_classes(labels, classes, len(images), name)
    return ImageSet(name=name, array=images, labels=labels, classes=classes)


__all__ = ["ImageSet", "load_images", "FIT_POLICIES", "nnfeat_home", "as_rgb_uint8", "IMAGE_SUFFIXES", "TORCHVISION_DATASETS"]
