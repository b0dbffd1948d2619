"""The activation-collection stage: a layer's activations over a dataset, streamed to disk, cached and resumable.

The atlas (Carter et al., "Activation Atlas", Distill 2019), projections and the TensorBoard Projector export all
read it. Two ways to turn an image's activation map into rows:

* ``pool=None`` (the atlas): ``per_image`` distinct random spatial positions per image; each row keeps the
  activation vector there (C,) and, when the model outputs logits (B, K), the attribution of every class at that
  position, ``sum_c act[c] * d logit_k / d act[c]`` (Carter et al. 2019);
* ``pool="mean" | "max" | "center"`` (projections): one row per image, the map's spatial mean, spatial max or the
  vector at the centre position (token layers: the mean / max over the patch tokens; ``center`` is the class
  token when the model has one, see :func:`pool_positions`).

Results go to memory-mapped ``.npy`` files in ``directory``, so a million rows never have to fit in memory:

* ``acts.npy``    (N, C) float32 activation vectors
* ``attr.npy``    (N, K) float32 class attributions (only when asked and the model has logits)
* ``samples.npy`` (N, 2) int64: dataset image index, flat position index in the layer's map (-1: pooled)
* ``collect.json`` settings key, layer shape, ``complete`` flag and the sha256 digest of each array file
  (written last: the arrays are complete and final whenever it exists)

While collecting, each batch is its own atomic record ``batches/b-00012.npz`` (its rows and the settings key);
a re-run keeps every record that loads and has the same key and computes the rest, so an interrupted
(killed) collection resumes at the batches it lacked. The merge fills each array in a hidden temporary and
renames it, so no final name ever holds a partial file; after it, ``batches/`` is deleted. Randomness is drawn
from a generator seeded by (seed, batch index), so a resumed or sharded collection (batch ``b`` on rank
``b % world``, see :func:`collect`) equals an uninterrupted one byte for byte.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.autograd import forward_ad

from nnfeat.analysis.fast_path import fast_network
from nnfeat.analysis.collect_files import (BATCH_DIR, META_FILE, batch_path, complete_and_valid, file_digest,
                                           merge_batches, read_batch, save_npz)
from nnfeat.analysis.tokens import token_grid
from nnfeat.data import ImageSet
from nnfeat.errors import NnfeatError
from nnfeat.finite import check_finite
from nnfeat.hooks import ActivationCapture
from nnfeat.distributed import Ranks, current
from nnfeat.io import read_json
from nnfeat.layouts import OUTPUT, positions_view
from nnfeat.models.base import Model
from nnfeat.progress import progress_bar
from nnfeat.seeds import generator

@dataclass
class Collected:
    """Memory-mapped collection results (see the module docstring).

    Attributes:
        acts: (N, C) float32.
        attr: (N, K) float32 or None when the model has no logits.
        samples: (N, 2) int64 (image index, flat position).
        layer_shape: the layer's activation shape without batch, e.g. (64, 8, 8).
        reused: whether :func:`collect` found it complete and valid (nothing computed or merged).
    """

    acts: np.ndarray
    attr: np.ndarray | None
    samples: np.ndarray
    layer_shape: tuple[int, ...]
    reused: bool = False

    def __len__(self) -> int:
        return len(self.acts)

    @property
    def image_index(self) -> np.ndarray:
        return self.samples[:, 0]

    def position_yx(self, index: int) -> tuple[int, int]:
        """(y, x) of sample ``index`` in the layer's map ((0, token) for tokens)."""
        flat = int(self.samples[index, 1])
        if len(self.layer_shape) == 3:
            return divmod(flat, self.layer_shape[2])
        return 0, flat


def load_collected(directory: Path) -> Collected:
    """Open a complete collection in ``directory`` (memory-mapped, read-only)."""
    directory = Path(directory)
    meta = read_json(directory / META_FILE)
    attr = np.load(directory / "attr.npy", mmap_mode="r") if meta["has_attribution"] else None
    return Collected(
        acts=np.load(directory / "acts.npy", mmap_mode="r"),
        attr=attr,
        samples=np.load(directory / "samples.npy", mmap_mode="r"),
        layer_shape=tuple(meta["layer_shape"]),
    )


def model_logit_count(model: Model) -> int | None:
    """K when the model's output is a (B, K) logit vector, else None."""
    shape = model.layer_shapes([OUTPUT])[OUTPUT]
    return int(shape[1]) if len(shape) == 2 else None


POOLS = ("mean", "max", "center")


def collect(model: Model, layer: str, images: ImageSet, directory: Path, *, n: int | None = None,
            per_image: int = 1, pool: str | None = None, seed: int = 0, batch_size: int = 128,
            attribution: bool = True, key: str = "", progress: bool = True, ranks: Ranks | None = None
            ) -> Collected:
    """Collect ``n`` rows of ``layer`` activations over ``images`` into ``directory``.

    ``pool=None``: ``per_image`` random positions per image from a random subset (seeded) of
    ``ceil(n / per_image)`` images (all of them if there are fewer), so the collection holds
    ``images_used * per_image`` rows, with class attributions when ``attribution``. ``pool`` in
    :data:`POOLS`: one pooled row per image, for ``n`` images (default all) drawn from ``seed`` and kept in
    source order, never with attributions. A complete collection with the same ``key`` and settings (whose
    files load with the right shapes and digests) is reused; otherwise the batches whose records are present
    and valid are kept and the others computed.

    Sharding (``ranks``, default :func:`nnfeat.distributed.current`; a collective call when sharded): batch
    ``b`` is computed by rank ``b % world`` and written as its own record ``batches/b-0000b.npz`` (atomic);
    after a barrier rank 0 merges the records into ``acts.npy`` / ``samples.npy`` / ``attr.npy`` (each filled
    in a hidden temporary, memory-mapped, then renamed), writes ``collect.json`` and deletes ``batches/``;
    after a second barrier every rank opens the result. The bytes do not depend on the rank count. Every rank
    must call it, unless the collection is complete (then it only opens the files, with no collective).

    Returns:
        :class:`Collected` (memory-mapped).
    """
    ranks = ranks if ranks is not None else current()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    device = model.device
    size = tuple(model.input_size)
    layer_shape = tuple(model.layer_shapes([layer], size)[layer][1:])
    probe = positions_view(torch.zeros((1, *layer_shape)))
    positions, channels = probe.shape[1], probe.shape[2]
    if pool is not None and pool not in POOLS:
        raise NnfeatError(f"unknown pooling '{pool}': use {', '.join(POOLS)}")
    if per_image < 1:
        raise NnfeatError(f"--per-image must be at least 1, got {per_image}")
    per_image = 1 if pool is not None else min(per_image, positions)
    n = len(images) if n is None and pool is not None else n
    if n is None or n < 1:
        raise NnfeatError(f"--n must be at least 1, got {n}")
    logits = model_logit_count(model) if attribution and pool is None else None
    mode = attribution_mode(model, layer, size, per_image, logits) if logits else None
    fast = fast_network(model, keep=[layer])  # BatchNorm folded (not into the layer's conv), channels-last

    image_count = min(len(images), math.ceil(n / per_image))
    order = torch.randperm(len(images), generator=generator(seed, "images"))[:image_count].numpy()
    if pool is not None:
        order = np.sort(order)  # pooled rows follow the source order
    first, center = pool_positions(model, layer_shape, size) if pool is not None else (0, 0)
    total = image_count * per_image
    batches = math.ceil(image_count / batch_size)

    meta = {"key": key, "layer": layer, "layer_shape": list(layer_shape), "pool": pool, "seed": seed,
            "source": images.name, "source_size": len(images), "samples": total, "per_image": per_image,
            "images": image_count, "batch_size": batch_size, "has_attribution": logits is not None,
            "classes": logits, "attribution": mode, "fast_path": fast.record()}
    widths = {"acts": channels, "samples": 2, **({"attr": logits} if logits else {})}
    final_shapes = {name: (total, width) for name, width in widths.items()}
    # No collective here: every rank reads the same files before any rank can change them (the merge waits for
    # all ranks at a barrier), so they agree; and a complete collection then opens on one rank alone too (a
    # rank-0-only stage reading a cached collection must not wait for the others).
    if complete_and_valid(directory, meta, final_shapes):
        if ranks.writer:
            shutil.rmtree(directory / BATCH_DIR, ignore_errors=True)  # a merge killed before its clean-up
        return dataclasses.replace(load_collected(directory), reused=True)
    record_key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]

    def rows_of(b: int) -> int:
        return (min((b + 1) * batch_size, image_count) - b * batch_size) * per_image

    def batch_shapes(b: int) -> dict[str, tuple[int, ...]]:
        return {name: (rows_of(b), width) for name, width in widths.items()}

    mine = ranks.mine(batches)
    todo = [b for b in mine if read_batch(batch_path(directory, b), f"{record_key}/{b}", batch_shapes(b)) is None]
    bar = progress_bar(len(mine), f"collect {layer}", enabled=progress, unit="batch", initial=len(mine) - len(todo))
    layers = [layer, OUTPUT] if logits else [layer]
    origin = images.source_indices  # (N,) what the error line calls an image
    with ActivationCapture(fast.network, layers) as capture:  # stops after the layer unless the logits are needed
        for b in todo:
            idx = order[b * batch_size:(b + 1) * batch_size]
            batch = images.tensors(idx, size, device)
            if pool is None:
                pick = torch.rand(len(idx), positions, generator=generator(seed, "positions", b)).argsort(1)[:, :per_image]
                vec, att = _sample_batch(capture, batch, layer, pick.to(device), logits, mode)
            else:
                vec, att = _pool_batch(capture, batch, layer, pool, first, center), None
                pick = torch.full((len(idx), 1), center if pool == "center" else -1, dtype=torch.long)
            arrays = {"key": np.array(f"{record_key}/{b}"),
                      "acts": vec.reshape(-1, channels).float().cpu().numpy(),
                      "samples": np.stack([np.repeat(idx, per_image).astype(np.int64),
                                           pick.reshape(-1).numpy().astype(np.int64)], 1)}
            if logits:
                arrays["attr"] = att.reshape(-1, logits).float().cpu().numpy()
            for name, what in (("acts", "activations"), ("attr", "class attributions")):
                if name in arrays:  # a NaN record is never written (nor cached)
                    check_finite(arrays[name], model.name, f"the {what} of layer '{layer}'",
                                 origin[arrays["samples"][:, 0]])
            save_npz(batch_path(directory, b), arrays)
            bar.update(1)
    bar.close()
    ranks.barrier()
    if ranks.writer:
        merge_batches(directory, meta, widths, total, batches, rows_of, batch_shapes, record_key)
    ranks.barrier()
    return load_collected(directory)


def images_key(images: ImageSet) -> str:
    """A short digest of what an image set is: its name, count, labels and three of its images (cheap)."""
    n = len(images)
    probe = images.read([0, n // 2, n - 1])
    labels = np.ascontiguousarray(images.labels if images.labels is not None else []).tobytes()
    words = f"{images.name}|{n}|{images.size}".encode() + hashlib.sha256(probe.tobytes() + labels).digest()
    return hashlib.sha256(words).hexdigest()[:16]


def pooled(model: Model, layer: str, images: ImageSet, root: Path, *, pool: str = "mean", batch_size: int = 128,
           progress: bool = True) -> tuple[Collected, bool]:
    """One pooled row per image of ``layer`` over ``images``, cached in ``root/collect-<layer>-<pool>/``
    (the folder every command uses, so projections and dataset examples share it).

    Returns:
        (:class:`Collected` with rows in image order, whether it came complete from the cache).
    """
    folder = Path(root) / ("collect-" + "".join(c if c.isalnum() or c in "-_." else "_" for c in layer) + f"-{pool}")
    weights = getattr(model, "weights", None)
    key = hashlib.sha256(json.dumps(["pooled", model.name, weights, layer, pool, images_key(images), batch_size])
                         .encode()).hexdigest()[:16]
    data = collect(model, layer, images, folder, pool=pool, batch_size=batch_size, attribution=False, key=key,
                   progress=progress)
    if not np.array_equal(np.asarray(data.samples[:, 0]), np.arange(len(images))):
        raise NnfeatError(f"the cached collection in '{folder}' does not match the images: delete the folder")
    return data, data.reused


def pool_positions(model: Model, layer_shape, size) -> tuple[int, int]:
    """(first pooled position, ``center`` position) of a layer: for a (C, h, w) map (0, the middle); for tokens
    (N, C) the patch tokens start after the class / register tokens
    (:func:`nnfeat.analysis.tokens.token_grid` finds them) and ``center`` is the class token when there is one,
    else the middle patch; a vector (C,) is its one position (0, 0)."""
    if len(layer_shape) == 3:
        _, h, w = layer_shape
        return 0, (h // 2) * w + w // 2
    if len(layer_shape) == 1:
        return 0, 0
    prefix, gh, gw = token_grid(model, layer_shape[0], size)
    return prefix, 0 if prefix else prefix + (gh // 2) * gw + gw // 2


@torch.no_grad()
def _pool_batch(capture: ActivationCapture, batch: torch.Tensor, layer: str, pool: str,
                first: int, center: int) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, C): the layer's map pooled over its positions ``first:`` (``mean``/``max``) or
    the vector at ``center``."""
    view = positions_view(capture(batch)[layer]).float()  # (B, P, C)
    if pool == "center":
        return view[:, center:center + 1]
    if pool == "mean":
        return view[:, first:].mean(1, keepdim=True)
    return view[:, first:].amax(1, keepdim=True)


def _sample_batch(capture: ActivationCapture, batch: torch.Tensor, layer: str, pick: torch.Tensor,
                  logits: int | None, mode: str = "backward") -> tuple[torch.Tensor, torch.Tensor | None]:
    """Activations (B, S, C) at the picked positions (B, S), and attributions (B, S, K) when ``logits``.

    The attribution of class k at a position is ``act . d logit_k / d act`` there (Carter et al. 2019), i.e.
    the directional derivative of the logits along the activation restricted to that position.
    ``mode`` (see :func:`attribution_mode`): ``"forward"``, one forward-mode pass of the whole network per
    picked position for all K classes at once, or ``"backward"``, one backward pass per class of the part
    after the layer. A network with an op that has no forward-mode rule falls back to ``"backward"``.
    """
    with torch.no_grad():
        acts = capture(batch)
        view = positions_view(acts[layer])
        picked = _gather(view, pick)
        if logits is None:
            return picked, None
        if mode == "forward":
            try:
                return picked, _attributions_forward(capture, batch, layer, acts[layer], pick, picked)
            except (RuntimeError, NotImplementedError) as err:
                if not _no_forward_rule(err):
                    raise
    return picked, _attributions_backward(capture, batch, layer, pick, picked, logits)


def attribution_mode(model: Model, layer: str, size, per_image: int, logits: int) -> str:
    """``"forward"`` or ``"backward"``: the cheaper way to get K class attributions, from a FLOP count.

    Forward mode costs one forward plus ``per_image`` dual-number passes of the whole network (~1.5x a
    forward each); backward mode one forward plus K backward passes of the part after ``layer`` (~2x its
    forward each). FLOPs (``torch.utils.flop_counter``, convolutions and matmuls) of one probe image
    decide, so the choice is the same on every run: for CIFAR ``layer3`` (10 classes, only the pooled
    linear head after it) backward wins; for ``inception4c`` of a 1000-class GoogLeNet, forward mode
    is ~60x faster.
    """
    from torch.utils.flop_counter import FlopCounterMode  # lazy: importing it loads triton (~0.3 s)

    probe = torch.full((1, 3, *size), 0.5, device=model.device)
    counts = []
    for layers in ([layer], [OUTPUT]):
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), ActivationCapture(model, layers) as capture, counter:
            capture(probe)
        counts.append(counter.get_total_flops())
    before, total = counts
    forward_cost = total + per_image * 1.5 * total  # the plain pass that reads the activation, then the JVPs
    backward_cost = total + logits * 2.0 * max(total - before, 0)
    return "forward" if forward_cost < backward_cost else "backward"


def _no_forward_rule(err: BaseException) -> bool:
    """Whether ``err`` says an op of the network has no forward-mode AD rule (torch's messages name
    "forward AD", "forward mode AD" or a missing ``jvp``)."""
    text = str(err).lower()
    return "forward ad" in text or "forward mode" in text or "forward-mode" in text or "jvp" in text


def _attributions_forward(capture: ActivationCapture, batch: torch.Tensor, layer: str, act: torch.Tensor,
                          pick: torch.Tensor, picked: torch.Tensor) -> torch.Tensor:
    """(B, S, K) attributions by one Jacobian-vector product per picked position; ``act`` is the layer's
    activation, ``pick`` (B, S) flat positions, ``picked`` (B, S, C) the activation there."""
    columns = []
    with forward_ad.dual_level(), _math_attention():
        for s in range(pick.shape[1]):
            tangent = torch.zeros_like(act)
            index = pick[:, s:s + 1].unsqueeze(-1).expand(-1, 1, picked.shape[-1])
            positions_view(tangent).scatter_(1, index, picked[:, s:s + 1])  # act at this position, zero elsewhere
            out = capture(batch, tangents={layer: tangent})[OUTPUT]
            columns.append(forward_ad.unpack_dual(out).tangent.flatten(1).float())
    return torch.stack(columns, 1)


def _math_attention():
    """Scaled-dot-product attention by its plain-math kernel (the same function; the fused CPU/GPU kernels
    have no forward-mode rule), so ViTs get forward-mode attributions too. A no-op where torch lacks it."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel  # torch >= 2.3 only
    except ImportError:  # torch < 2.3
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.MATH])


def _attributions_backward(capture: ActivationCapture, batch: torch.Tensor, layer: str, pick: torch.Tensor,
                           picked: torch.Tensor, logits: int) -> torch.Tensor:
    """(B, S, K) attributions by one backward pass per class (the fallback of :func:`_sample_batch`)."""
    with torch.enable_grad():
        acts = capture(batch.requires_grad_(True))
        act, out = acts[layer], acts[OUTPUT]
        attributions = []
        for k in range(logits):
            (grad,) = torch.autograd.grad(out[:, k].sum(), act, retain_graph=k < logits - 1)
            attributions.append((_gather(positions_view(grad), pick) * picked).sum(-1))
    return torch.stack(attributions, -1)


def _gather(view: torch.Tensor, pick: torch.Tensor) -> torch.Tensor:
    """(B, P, C) and (B, S) position indices -> (B, S, C)."""
    return view.gather(1, pick.unsqueeze(-1).expand(-1, -1, view.shape[-1]))


__all__ = ["POOLS", "collect", "pooled", "images_key", "load_collected", "Collected", "model_logit_count",
           "pool_positions", "save_npz", "file_digest"]
