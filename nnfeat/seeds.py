"""Seeds for stages and batches: every unit's and batch's randomness comes from ``(seed, stage, index)``,
never from a running RNG, so a resumed or re-split job draws the same numbers."""

from __future__ import annotations

import zlib

import numpy as np
import torch


def stage_seed(seed: int, stage: str, index: int = 0) -> int:
    """A well-mixed 63-bit seed for (seed, stage, index): independent of any running RNG."""
    words = [int(seed) & 0xFFFFFFFF, zlib.crc32(stage.encode()), int(index) & 0xFFFFFFFF]
    high, low = (int(w) for w in np.random.SeedSequence(words).generate_state(2))
    return ((high << 32) | low) & 0x7FFFFFFFFFFFFFFF


def generator(seed: int, stage: str, index: int = 0) -> torch.Generator:
    """A CPU torch.Generator seeded from (seed, stage, index)."""
    return torch.Generator().manual_seed(stage_seed(seed, stage, index))


__all__ = ["stage_seed", "generator"]
