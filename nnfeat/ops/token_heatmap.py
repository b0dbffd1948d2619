"""``heatmap`` on token models: a layer's strongest channels over the tokens of texts, as a strip under each text.

For a layer whose output is one vector per token, (B, T, D) (Hugging Face outputs that are tuples or
``ModelOutput``: their first tensor), :func:`token_heatmap` ranks, per text, the D channels by their mean
|activation| over the text's real tokens (padding excluded) and keeps the ``top`` K (default 8), or takes the
channels the units give (``layer:0..3``, the same for every text); ``reduce="sum"``/``"norm"`` draws one row, the
channels' sum or L2 norm per token. Each text is drawn by :func:`nnfeat.views.token_strip.token_strip`: its tokens
in a row, under each token a column of K cells on one stated colour scale (the whole figure's, or with
``scale="per-map"`` each text's own, stated in its title).

A network that takes no mask runs on each length of text at that length (as
:meth:`~nnfeat.models.text.TokenModel.forward` does), so padding never changes what a text's tokens get. For an
encoder-decoder model the decoder side is decoded greedily (or given as target texts), and a decoder layer's
strip is drawn under the decoder's tokens (bos to eos: every token the decoder takes or produced).
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np
import torch

from nnfeat.errors import NnfeatError
from nnfeat.io import atomic_path, save_image
from nnfeat.models.text import TokenBatch, TokenModel
from nnfeat.ops.results import Result, cli_command, weights_flag
from nnfeat.texts import TextSet, load_texts
from nnfeat.units import Units, parse_units
from nnfeat.views.token_strip import StripScale, scale_note, token_strip, token_strips_sheet

__all__ = ["TokenHeatmapResult", "token_heatmap", "capture_token_layer", "rank_channels", "DEFAULT_TOP"]

DEFAULT_TOP = 8
MAX_NEW = 64
_REDUCES = ("channels", "sum", "norm")
_SCALES = ("figure", "per-map")


@dataclass(repr=False)
class TokenHeatmapResult(Result):
    """What :func:`token_heatmap` returns.

    Attributes:
        model, layer, units: the model's name, the layer and the units text given.
        texts, tokens: the texts and, per text, the tokens its strip is drawn under (a decoder layer: the
            decoder's tokens).
        channels: per text the K channels drawn, strongest first (``reduce`` sum/norm: ``[]``).
        labels: per text the K row labels.
        values: per text a (K, T_i) tensor, its activations at its T_i real tokens.
        strength: per text the K channels' mean |activation| over its real tokens.
        scales: per text its colour scale (all equal with ``scale="figure"``).
    """

    model: str
    layer: str
    units: str
    texts: list[str]
    tokens: list[list[str]]
    channels: list[list[int]]
    labels: list[list[str]]
    values: list[torch.Tensor]
    strength: list[list[float]]
    scales: list[StripScale]
    reduce: str = "channels"
    scale: str = "figure"
    side: str = "input"
    width: int = 0
    generated: list[str] | None = None
    #: seq2seq: the decoder side's texts (generated or given); a decoder layer's strips are drawn under them
    decoder_texts: list[str] | None = None
    notes: list[str] = field(default_factory=list)
    source: str = "text"
    indices: list[int] = field(default_factory=list)
    device: str = "cpu"
    command: str | None = None
    elapsed: float = 0.0
    kind: ClassVar[str] = "heatmap"

    def title(self) -> str:
        what = {"channels": "strongest channels", "sum": "sum of channels", "norm": "norm of channels"}[self.reduce]
        return (f"{self.model} {self.layer}: {what} over the tokens of {len(self.texts)} "
                f"text{'s' if len(self.texts) != 1 else ''}")

    def strip(self, i: int) -> np.ndarray:
        """Text ``i``'s strip, (H, W, 3) uint8."""
        head = f"text {i}: {_short(self.texts[i])}"
        if self.side == "decoder" and self.decoder_texts is not None:
            head += f"  -> decoder: {_short(self.decoder_texts[i])}"
        if self.scale == "per-map":
            head += f"  (scale {self.scales[i].low:.3g} .. {self.scales[i].high:.3g})"
        return token_strip(self.tokens[i], self.values[i], self.labels[i], self.scales[i], title=head)

    def sheet(self) -> np.ndarray:
        if not hasattr(self, "_sheet"):
            what = (f"activation of {self.layer} at each token (rows: channels ranked by mean |activation| over "
                    "the text's tokens)" if self.reduce == "channels" and self.units == self.layer
                    else f"{self.reduce if self.reduce != 'channels' else 'activation'} of {self.layer} at each token")
            shared = self.scales[0] if self.scale == "figure" else None
            note = scale_note(shared, what) if shared else f"{what}; each text on its own scale (in its title)"
            self._sheet = token_strips_sheet([self.strip(i) for i in range(len(self.texts))], shared, note,
                                             title=self.title())
        return self._sheet

    @property
    def images(self) -> torch.Tensor:
        return torch.from_numpy(self.sheet().copy()).permute(2, 0, 1)[None].float() / 255

    def record(self) -> dict:
        return {"model": self.model, "layer": self.layer, "units": self.units, "reduce": self.reduce,
                "scale": self.scale, "side": self.side, "width": self.width, "source": self.source,
                "indices": self.indices, "texts": self.texts, "tokens": self.tokens, "generated": self.generated,
                "decoder_texts": self.decoder_texts, "channels": self.channels, "labels": self.labels,
                "strength": [[round(v, 6) for v in row] for row in self.strength],
                "scales": [{"low": s.low, "high": s.high, "signed": s.signed} for s in self.scales],
                "notes": self.notes, "device": self.device}

    def write_files(self, out: Path) -> list[str]:
        files = []
        for i in range(len(self.texts)):  # one strip per text
            save_image(out / f"strip-{i}.png", self.strip(i))
            files.append(f"strip-{i}.png")
        with atomic_path(out / "heatmap.npz") as tmp, open(tmp, "wb") as handle:
            np.savez_compressed(handle, **{f"text{i}": v.numpy() for i, v in enumerate(self.values)})
        return [*files, "heatmap.npz"]


def _short(text: str, n: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n - 1] + "\u2026"


# -- capture ------------------------------------------------------------------------------------------------
def _first_tensor(value):
    if torch.is_tensor(value):
        return value
    if isinstance(value, dict):  # a ModelOutput
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        return next((t for t in map(_first_tensor, value) if t is not None), None)
    return None


def _run(model: TokenModel, layer: str, ids: torch.Tensor, mask: torch.Tensor, decoder: torch.Tensor | None
         ) -> torch.Tensor:
    """One forward pass; the layer's output (its first tensor), or the network's output for ``output``."""
    if layer == "output":
        return _first_tensor(model.forward(ids, mask, decoder))
    seen: list[torch.Tensor] = []
    hook = model.module(layer).register_forward_hook(lambda _m, _i, out: seen.append(_first_tensor(out)))
    try:
        model.forward(ids, mask, decoder)
    finally:
        hook.remove()
    if not seen or seen[0] is None:
        raise NnfeatError(f"layer '{layer}' of {model.name} gives no tensor on these texts: pick a layer that does "
                          f"(nnfeat layers {model.name} lists them)")
    return seen[0]


@torch.no_grad()
def capture_token_layer(model: TokenModel, layer: str, batch: TokenBatch, decoder: torch.Tensor | None = None
                        ) -> torch.Tensor:
    """(B, T, D) output of ``layer`` over ``batch`` (T: the batch's width, or the decoder's for a decoder layer),
    zeros at padded tokens. A network without a mask runs once per distinct text length, unpadded."""
    if model.call != "ids" or model.kind == "seq2seq" or bool(batch.mask.all()):
        return _as_tokens(model, layer, _run(model, layer, batch.ids, batch.mask, decoder), len(batch))
    lengths = batch.mask.sum(1)
    out = None
    for length in sorted(set(lengths.tolist())):  # one pass per distinct length, not per text
        rows = (lengths == length).nonzero()[:, 0]
        part = _as_tokens(model, layer, _run(model, layer, batch.ids[rows, :length], batch.mask[rows, :length],
                                             None), len(rows))
        if part.shape[1] != length:
            raise NnfeatError(f"layer '{layer}' of {model.name} gives {part.shape[1]} vectors for {length} tokens: "
                              "pick a layer with one vector per token")
        if out is None:
            out = part.new_zeros(len(batch), batch.ids.shape[1], part.shape[2])
        out[rows, :length] = part
    return out


def _as_tokens(model: TokenModel, layer: str, act: torch.Tensor, b: int) -> torch.Tensor:
    if act is None or act.dim() != 3 or act.shape[0] != b:
        shape = "none" if act is None else f"({', '.join(map(str, act.shape))})"
        raise NnfeatError(f"layer '{layer}' of {model.name} gives {shape}, not one vector per token (B, T, D): pick "
                          f"a layer whose output is token vectors (nnfeat layers {model.name} lists shapes)")
    return act.float()


def rank_channels(act: torch.Tensor, mask: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, D) activations, (B, T) bool real tokens -> the ``k`` channels per text with the largest mean
    |activation| over its real tokens, strongest first: ((B, k) channel indices, (B, k) their means)."""
    m = mask.to(act.dtype)[..., None]
    mean = (act.abs() * m).sum(1) / m.sum(1).clamp_min(1)  # (B, D)
    strength, order = mean.topk(min(k, act.shape[2]), dim=1)  # ties: the lower channel first (topk is stable)
    return order, strength


# -- the operation ------------------------------------------------------------------------------------------
def token_heatmap(model: TokenModel, units: str | Units, texts: TextSet | Sequence[str], *, top: int | None = None,
                  reduce: str = "channels", scale: str = "figure", target_texts: Sequence[str] | None = None,
                  batch_size: int = 64) -> TokenHeatmapResult:
    """The strongest channels of a token layer over the tokens of ``texts`` (see the module docstring).

    Args:
        model: a :class:`~nnfeat.models.text.TokenModel`.
        units: ``LAYER`` (the ``top`` strongest channels per text) or ``LAYER:CHANNELS`` (those, in that order).
        texts: a :class:`~nnfeat.texts.TextSet` or a list of texts.
        top: how many channels with a plain layer (default 8, or every channel of a narrower layer).
        reduce: ``channels``, or one row: the channels' ``sum`` or L2 ``norm`` per token.
        scale: ``figure`` (one colour scale) or ``per-map`` (one per text).
        target_texts: seq2seq: the decoder side per text (default greedy decoding).
        batch_size: texts per forward pass.

    Raises:
        NnfeatError: one line for an unknown layer, a layer without one vector per token, a position in the
            units, channels out of range, an empty text, or target texts for a model that is not seq2seq.
    """
    started = time.perf_counter()
    units = parse_units(units) if isinstance(units, str) else units
    if units.position is not None:
        raise NnfeatError(f"heatmap on a token model draws every token: give '{units.layer}' or "
                          f"'{units.layer}:CHANNELS', without @POSITION")
    if reduce not in _REDUCES or scale not in _SCALES:
        raise NnfeatError(f"reduce must be one of {', '.join(_REDUCES)} and scale one of {', '.join(_SCALES)}")
    if top is not None and top < 1:
        raise NnfeatError(f"--top {top} must be at least 1")
    if batch_size < 1:
        raise NnfeatError(f"--batch {batch_size} must be at least 1")
    if units.layer != "output":
        model.module(units.layer)  # an unknown layer: one line, before any work
    texts = texts if isinstance(texts, TextSet) else load_texts(list(texts))
    if target_texts is not None and model.kind != "seq2seq":
        raise NnfeatError(f"{model.name} is a {model.kind} model: target texts are for encoder-decoder models")
    if target_texts is not None and len(target_texts) != len(texts):
        raise NnfeatError(f"{len(target_texts)} target texts for {len(texts)} texts: give one target text per text")
    model.encode(texts.texts)  # a text the tokenizer cannot take: one line, before any pass
    chunks = [_chunk(model, units, texts.texts[s:s + batch_size],
                     None if target_texts is None else list(target_texts[s:s + batch_size]), top, reduce)
              for s in range(0, len(texts), batch_size)]  # --batch texts per pass
    tokens = [t for c in chunks for t in c["tokens"]]
    channels = [r for c in chunks for r in c["channels"]]
    labels = [r for c in chunks for r in c["labels"]]
    values = [v for c in chunks for v in c["values"]]
    decoded = [t for c in chunks for t in c["decoded"]]
    cut = [i for c in chunks for i in c["truncated"]]
    side = chunks[0]["side"]
    notes = [n for n in (TokenBatch(torch.zeros(0), torch.zeros(0), [], texts.texts, cut).note(model.max_length),)
             if n]
    strength = [[float(x) for x in (v.abs().sum(1) / max(v.shape[1], 1))] for v in values]
    scales = _scales(values, scale)
    command = _command(model, units, texts, top, reduce, scale)
    for t in target_texts or ():
        command += f" --target-text {shlex.quote(t)}"
    return TokenHeatmapResult(
        model=model.name, layer=units.layer, units=str(units), texts=texts.texts, tokens=tokens,
        channels=channels, labels=labels, values=values, strength=strength, scales=scales, reduce=reduce, scale=scale,
        side=side, width=chunks[0]["width"],
        generated=decoded if model.kind == "seq2seq" and target_texts is None else None,
        decoder_texts=decoded if model.kind == "seq2seq" else None, notes=notes, source=texts.source,
        indices=texts.indices, device=str(model.device), command=command, elapsed=time.perf_counter() - started)


def _chunk(model: TokenModel, units: Units, texts: list[str], target_texts: list[str] | None, top: int | None,
           reduce: str) -> dict:
    """One pass over ``texts``: per text its tokens, channels, labels and (K, T_i) values."""
    batch = model.encode(texts)
    decoder, target = None, None
    if model.kind == "seq2seq":
        target = (model.encode(target_texts, tokenizer=model.target_tokenizer) if target_texts is not None
                  else model.generate(batch, MAX_NEW))
        decoder = target.ids
    act = capture_token_layer(model, units.layer, batch, decoder)
    side, shown = _side(model, units.layer, act, batch, target)
    mask = shown.mask.cpu()
    act = act.cpu() * mask[..., None]
    channels, labels, rows = _rows(act, mask, units, top, reduce)
    values = [rows[i, :, :n].contiguous() for i, n in enumerate(mask.sum(1).tolist())]  # per text: (K, T_i)
    decoded = [] if target is None else list(target_texts or target.texts)
    return {"tokens": shown.tokens, "channels": channels, "labels": labels, "values": values, "side": side,
            "width": int(act.shape[2]), "decoded": decoded, "truncated": batch.truncated}


def _command(model: TokenModel, units: Units, texts: TextSet, top, reduce: str, scale: str) -> str:
    command = cli_command("heatmap", model.name, str(units), reduce=None if reduce == "channels" else reduce,
                          top=top, scale=None if scale == "figure" else scale, weights=weights_flag(model))
    options = texts.command_options()
    if "text_file" in options:
        return command + f" --text-file {shlex.quote(options['text_file'])} --n {options['n']}"
    return command + "".join(f" --text {shlex.quote(t)}" for t in options["text"])


def _side(model: TokenModel, layer: str, act: torch.Tensor, batch: TokenBatch, target: TokenBatch | None
          ) -> tuple[str, TokenBatch]:
    """Which tokens the layer's vectors belong to: the input's, or (seq2seq) the decoder's."""
    ts, t = batch.ids.shape[1], act.shape[1]
    if target is None:
        if t != ts:
            raise NnfeatError(f"layer '{layer}' of {model.name} gives {t} vectors for {ts} tokens: pick a layer "
                              "with one vector per token")
        return "input", batch
    td = target.ids.shape[1]
    if t == td and t != ts:
        return "decoder", target
    if t == ts and t != td:
        return "input", batch
    if t == ts == td:  # one more decoder token tells the sides apart
        longer = torch.cat([target.ids, target.ids[:, -1:]], 1)
        return ("decoder", target) if capture_token_layer(model, layer, batch, longer).shape[1] == td + 1 \
            else ("input", batch)
    raise NnfeatError(f"layer '{layer}' of {model.name} gives {t} vectors for {ts} source and {td} decoder tokens: "
                      "pick a layer with one vector per token")


def _rows(act: torch.Tensor, mask: torch.Tensor, units: Units, top: int | None, reduce: str):
    """(B, K, T) rows to draw with their channels and labels per text."""
    b, _, d = act.shape
    if reduce != "channels":
        picked = act if units.channels is None else act[..., _checked(units, d)]
        row = picked.sum(-1) if reduce == "sum" else picked.norm(dim=-1)
        return [[] for _ in range(b)], [[reduce] for _ in range(b)], row[:, None, :]
    if units.channels is not None:
        chosen = torch.tensor(_checked(units, d)).expand(b, -1)
    else:
        chosen, _ = rank_channels(act, mask, top or DEFAULT_TOP)
    rows = torch.gather(act, 2, chosen[:, None, :].expand(-1, act.shape[1], -1)).transpose(1, 2)  # (B, K, T)
    channels = chosen.tolist()
    return channels, [[str(c) for c in row] for row in channels], rows


def _checked(units: Units, d: int) -> list[int]:
    bad = [c for c in units.channels if not 0 <= c < d]
    if bad:
        raise NnfeatError(f"channel {bad[0]} out of range for layer '{units.layer}': valid channels are 0..{d - 1}")
    return list(units.channels)


def _scales(values: Sequence[torch.Tensor], scale: str) -> list[StripScale]:
    def one(parts: Sequence[torch.Tensor]) -> StripScale:
        lo = min(float(v.min()) for v in parts)
        hi = max(float(v.max()) for v in parts)
        if lo < 0 < hi:
            bound = max(-lo, hi)
            return StripScale(-bound, bound, True)
        if hi - lo <= 1e-12:
            return StripScale(lo - 0.5, hi + 0.5, False)
        return StripScale(lo, hi, False)

    if scale == "figure":
        shared = one(values)
        return [shared for _ in values]
    return [one([v]) for v in values]

