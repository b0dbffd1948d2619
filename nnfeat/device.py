"""The one device and precision policy: which device a job runs on, and in which arithmetic.

Device (``--device``, every command's default ``auto``; ``load_model(device="auto")``): ``auto`` is the first
CUDA GPU, else Apple's MPS, else the CPU. Every operation then runs on the device its model is on, and
records it in its JSON.

Several processes (``torchrun``, see :mod:`nnfeat.distributed`): one GPU per rank. With CUDA, ``auto`` and a
bare ``cuda`` mean ``cuda:LOCAL_RANK`` (modulo the GPU count), and the ranks join an nccl group; without
CUDA every rank runs on the CPU and the group is gloo. An explicit ``cuda:N`` is kept as given.

Precision (``--precision auto|fp32|bf16``): ``auto`` is bf16 autocast of the model's forward pass where it
was measured to pay (:func:`default_autocast`), else float32. Memory format: channels-last input where it
was measured to pay (:func:`default_channels_last`).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from nnfeat.errors import NnfeatError

DEVICES_HELP = "auto (the first CUDA GPU, else MPS, else CPU; default), cpu, cuda, cuda:N or mps"


def local_gpu() -> int:
    """The GPU index of this process: ``LOCAL_RANK`` (modulo the GPU count) under torchrun, else 0."""
    try:
        local = int(os.environ.get("LOCAL_RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0
    except ValueError:
        local = 0
    return local % max(1, torch.cuda.device_count())


def auto_device() -> torch.device:
    """The first CUDA GPU (under torchrun: this rank's, :func:`local_gpu`), else Apple's MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_gpu())
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_device(device: str | torch.device | None = "auto", model: nn.Module | None = None) -> torch.device:
    """``"auto"`` -> :func:`auto_device`; ``None`` -> the device of ``model``'s parameters or buffers (``auto``
    without a model); anything else is checked: a one-line error for an unknown or unavailable device."""
    if device is None:
        tensor = next((t for t in (*model.parameters(), *model.buffers())), None) if model is not None else None
        return tensor.device if tensor is not None else auto_device()
    if isinstance(device, str) and device.strip().lower() == "auto":
        return auto_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise NnfeatError(f"unknown device '{device}': use {DEVICES_HELP}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise NnfeatError(f"device '{device}' requested but no CUDA GPU is available: use --device cpu or auto")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise NnfeatError(f"device '{device}' does not exist: valid are cuda:0..cuda:{torch.cuda.device_count() - 1}")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise NnfeatError(f"device '{device}' requested but MPS is not available: use --device cpu or auto")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_gpu())
    return dev


PRECISIONS = ("auto", "fp32", "bf16")


def autocast_for(precision: str) -> bool | None:
    """A ``--precision`` value -> ``render``'s ``autocast`` argument (``auto`` -> None: the device decides)."""
    if precision not in PRECISIONS:
        raise NnfeatError(f"unknown precision '{precision}': use one of {', '.join(PRECISIONS)}")
    return {"auto": None, "fp32": False, "bf16": True}[precision]


def precision_used(device: str | torch.device, autocast: bool | None, model: nn.Module | None = None) -> str:
    """``"bf16"`` or ``"fp32"``: what a render of ``model`` with this ``autocast`` argument runs on ``device``."""
    return "bf16" if (default_autocast(device, model) if autocast is None else autocast) else "fp32"


def default_autocast(device: str | torch.device, model: nn.Module | None = None) -> bool:
    """What ``autocast=None`` means: bf16 autocast where it is measured to pay, else float32.

    * CUDA: GPUs with native bf16 (compute capability 8.0 and later).
    * CPU: only on x86 CPUs with AVX512-BF16 or AMX (elsewhere bf16 is emulated, slower than float32),
      and only for networks made of dense convolutions (:func:`cpu_bf16_pays`). Measured render steps,
      bf16 / fp32 time on such a CPU (``experiments/bench_precision.py``): cifar10-resnet20 0.65,
      resnet50 0.61, swin_t 0.59, densenet121 0.72, googlenet 0.72; but mobilenet_v3_small 1.60 and
      efficientnet_b0 1.53 (depthwise convolutions) and vit_b_16 3.28 (``nn.MultiheadAttention``: its bf16
      batched matmuls take a slow copying path on the CPU). Final activations match float32 (README).
    * Other devices: float32.

    The result depends only on the hardware and the architecture, so a seed still gives the same image
    on the same machine. Pass ``autocast=False`` (CLI ``--precision fp32``) for float32 everywhere.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return cpu_has_native_bf16() and (model is None or cpu_bf16_pays(model))
    return False


def cpu_bf16_pays(model: nn.Module) -> bool:
    """Whether bf16 autocast speeds up a CPU render of ``model`` (see :func:`default_autocast`): the network
    has 2-D convolutions, none of them grouped or depthwise (``groups > 1``), and no ``nn.MultiheadAttention``.
    Conservative: it leaves out some networks where bf16 also pays (convnext's depthwise blocks measured
    0.58x), never one where it was measured slower."""
    modules = list(model.modules())
    convs = [m for m in modules if isinstance(m, nn.Conv2d)]
    return (bool(convs) and all(m.groups == 1 for m in convs)
            and not any(isinstance(m, nn.MultiheadAttention) for m in modules))


def cpu_has_native_bf16() -> bool:
    """True when this CPU has AVX512-BF16 or AMX tiles and torch's oneDNN backend is available.

    torch has no public query for this; its ``torch.cpu._is_avx512_bf16_supported`` and
    ``_is_amx_tile_supported`` (present since torch 2.1) are used when they exist, and False otherwise.
    """
    if not torch.backends.mkldnn.is_available():
        return False
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    try:
        return any(bool(probe()) for probe in probes if callable(probe))
    except (RuntimeError, AttributeError):
        return False


def default_channels_last(device: torch.device, model: nn.Module | None = None) -> bool:
    """What ``channels_last=None`` means: channels-last input on the CPU when the network has 2-D convolutions.

    oneDNN's channels-last convolutions measured 8-20 % faster per render step than contiguous NCHW on every
    CPU configuration of ``experiments/bench_render.py``; converting the input is enough (conv outputs keep
    its format), so the network itself is not copied. Other devices keep NCHW until measured there.
    """
    if torch.device(device).type != "cpu":
        return False
    return model is None or any(isinstance(m, nn.Conv2d) for m in model.modules())


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the block on one CPU thread (torch's intra-op pool), restoring the previous count afterwards.

    A float reduction split over threads sums in an order that depends on the thread count, so a result
    that must be byte-identical whatever the process's thread setting (a seeded training run, the atlas's
    whitening and PCA) is computed inside this block.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


__all__ = ["DEVICES_HELP", "PRECISIONS", "local_gpu", "one_thread", "auto_device", "resolve_device", "autocast_for",
           "precision_used", "default_autocast", "cpu_bf16_pays", "cpu_has_native_bf16", "default_channels_last"]
