"""Token layers as maps: fold a (B, N, C) token sequence back onto its patch grid -> (B, C, gh, gw).

The extra tokens (class, register, distillation) and the patch grid come from the model when it says them:

* timm ViTs: ``num_prefix_tokens`` and ``patch_embed.patch_size`` (``patch_embed.grid_size`` at the
  native size);
* torchvision ViTs: ``class_token`` (one extra token) and ``patch_size``;

otherwise they are inferred: the smallest k in 0..8 for which N - k = gh * gw with gh / gw the input's
aspect ratio. Non-square grids are fine (a 224x160 input with 16 px patches is 14x10). The extra tokens
are the first k (the convention of timm and torchvision).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from nnfeat.errors import NnfeatError
from nnfeat.hooks import layer_root
from nnfeat.layouts import size2

#: The most extra (class/register/distillation) tokens the inference tries.
MAX_EXTRA_TOKENS = 8


def _pair(value) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return int(value), int(value)
    try:
        a, b = value
        return int(a), int(b)
    except (TypeError, ValueError):
        return None


def _declared(net: nn.Module, input_size: tuple[int, int]) -> tuple[int, int, int] | None:
    """(extra tokens, gh, gw) as the network declares them (timm, torchvision), or None."""
    h, w = input_size
    embed = getattr(net, "patch_embed", None)
    if embed is not None and hasattr(net, "num_prefix_tokens"):  # timm
        extra = int(net.num_prefix_tokens)
        patch = _pair(getattr(embed, "patch_size", None))
        if patch is not None:
            return extra, h // patch[0], w // patch[1]
        grid = _pair(getattr(embed, "grid_size", None))
        if grid is not None:
            return extra, grid[0], grid[1]
    if hasattr(net, "class_token") and hasattr(net, "patch_size"):  # torchvision VisionTransformer
        patch = _pair(net.patch_size)
        if patch is not None:
            return 1, h // patch[0], w // patch[1]
    return None


def infer_grid(n_tokens: int, input_size: Sequence[int]) -> tuple[int, int, int]:
    """(extra tokens k, gh, gw) for ``n_tokens`` tokens at ``input_size`` (H, W): the smallest k in 0..8 with
    N - k = gh * gw and gh / gw within 15 % of H / W (the closest such grid); a one-line error when none fits."""
    h, w = size2(tuple(input_size))
    aspect = h / w
    for extra in range(0, MAX_EXTRA_TOKENS + 1):
        m = n_tokens - extra
        if m < 1:
            break
        best = None
        for gh in range(1, int(math.isqrt(m)) + 1):
            if m % gh:
                continue
            for a, b in ((gh, m // gh), (m // gh, gh)):
                error = abs(math.log((a / b) / aspect))
                if best is None or error < best[0]:
                    best = (error, a, b)
        if best is not None and best[0] <= math.log(1.15):
            return extra, best[1], best[2]
    raise NnfeatError(f"cannot fold {n_tokens} tokens onto a patch grid of a {h}x{w} input: no grid gh*gw = "
                      f"{n_tokens}-k (k = 0..{MAX_EXTRA_TOKENS} extra tokens) matches its aspect ratio")


def token_grid(model: nn.Module, n_tokens: int, input_size: Sequence[int]) -> tuple[int, int, int]:
    """(extra tokens, gh, gw) of a token layer with ``n_tokens`` tokens at ``input_size``: from the model when it
    declares them and they add up, else :func:`infer_grid`."""
    size = size2(tuple(input_size))
    declared = _declared(layer_root(model), size)
    if declared is not None:
        extra, gh, gw = declared
        if extra + gh * gw == n_tokens:
            return declared
    return infer_grid(n_tokens, size)


def fold_tokens(act: torch.Tensor, model: nn.Module, input_size: Sequence[int]) -> torch.Tensor:
    """(B, N, C) tokens -> (B, C, gh, gw) patch maps (the extra tokens dropped), row-major like the patches."""
    if act.dim() != 3:
        raise NnfeatError(f"fold_tokens needs (B, N, C) tokens; got {tuple(act.shape)}")
    b, n, c = act.shape
    extra, gh, gw = token_grid(model, n, input_size)
    return act[:, extra:, :].transpose(1, 2).reshape(b, c, gh, gw)


__all__ = ["fold_tokens", "token_grid", "infer_grid", "MAX_EXTRA_TOKENS"]
