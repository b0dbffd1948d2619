"""``examples`` on token models: what a unit (a channel of a (B, T, D) token layer: an MLP neuron, a residual
channel, a per-head module's output) does over text.

* :func:`token_units` -- the units over given texts, every token coloured by the unit's activation with its value
  written under it (the "neuron view" of ecco, Alammar 2021); one section per unit, one row per text.
* :func:`token_examples` -- over a corpus (``--text-file``): per unit its ``k`` top- and bottom-activating
  tokens, each shown in its context (the token and ``window`` tokens each side, coloured by the unit), with the
  value, the text's index and the position. Special tokens (cls, sep, bos, pad...) are never candidates (they
  appear in windows). The corpus pass is the cached, resumable, sharded stage of
  :mod:`nnfeat.analysis.token_examples` (records under ``cache``, keyed by model, weights, layer, corpus digest
  and settings).

Both return a :class:`TokenExamplesResult` (kind ``examples``): ``examples.png``, ``examples.html`` (offline,
the same bytes for the same input) and ``examples.json``. A plain ``LAYER`` means its first
:data:`DEFAULT_UNITS` channels.
"""

from __future__ import annotations

import hashlib
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np
import torch

from nnfeat.analysis.token_examples import SIDES, Candidates, chunk_candidates, collect_token_candidates, corpus_key
from nnfeat.distributed import current
from nnfeat.errors import NnfeatError
from nnfeat.io import read_json, write_json
from nnfeat.models.text import TokenModel
from nnfeat.ops.results import Result, cli_command, weights_flag
from nnfeat.ops.token_heatmap import MAX_NEW, _side, capture_token_layer
from nnfeat.texts import TextSet, load_texts
from nnfeat.units import Units, format_units, parse_units
from nnfeat.views.token_examples_page import Row, Section, rows_page, rows_sheet
from nnfeat.views.token_strip import StripScale

__all__ = ["DEFAULT_UNITS", "DEFAULT_K", "DEFAULT_WINDOW", "TokenExamplesResult", "token_units", "token_examples"]

DEFAULT_UNITS, DEFAULT_K, DEFAULT_WINDOW = 8, 9, 8
MAX_WINDOW = 256


@dataclass(repr=False)
class TokenExamplesResult(Result):
    """What :func:`token_units` (``view="units"``) and :func:`token_examples` (``view="contexts"``) return.

    Attributes:
        model, layer, units: the model's name, the layer and the units text.
        channels: the units' channels.
        entries: per channel ``{"top": [...], "bottom": [...]}`` (contexts) or ``{"texts": [...]}`` (units); each
            entry a dict: ``value``, ``text`` (index in the texts), ``line`` (its line in the source),
            ``position``, ``tokens`` (the context or the whole text), ``values`` (the unit on those tokens,
            None past a text's end), ``centre`` (the entry's token among ``tokens``).
        scales: per unit its colour scale (over every value its rows show).
        reused, computed: chunks read from the cache / computed, on any rank (contexts).
    """

    model: str
    layer: str
    units: str
    channels: list[int]
    view: str
    entries: list[dict]
    scales: list[StripScale]
    source: str = "text"
    count: int = 0
    k: int = 0
    window: int = 0
    notes: list[str] = field(default_factory=list)
    reused: int = 0
    computed: int = 0
    device: str = "cpu"
    command: str | None = None
    elapsed: float = 0.0
    kind: ClassVar[str] = "examples"
    run_fields: ClassVar[tuple[str, ...]] = ("chunks_reused", "chunks_computed", "device")

    def title(self) -> str:
        if self.view == "units":
            return f"{self.model} {self.units}: activation at each token of {self.count} text(s)"
        return (f"{self.model} {self.units}: top and bottom contexts over {self.count} texts of {self.source} "
                f"(k {self.k}, window {self.window})")

    def sections(self) -> list[Section]:
        out = []
        for channel, entry, scale in zip(self.channels, self.entries, self.scales):  # one section per unit
            name = format_units(self.layer, [channel])
            if self.view == "units":
                rows = [Row(e["tokens"], _floats(e["values"]), f"text {e['text']}") for e in entry["texts"]]
                out.append(Section(name, [("", rows)], scale))
                continue
            groups = []
            for side in SIDES:
                rows = [Row(e["tokens"], _floats(e["values"]), f"{side} {r + 1}: {e['value']:.4g}  text {e['text']} "
                            f"@{e['position']}", e["centre"]) for r, e in enumerate(entry[side])]
                groups.append((f"{side} {len(rows)}" + (" (highest first)" if side == "top" else " (lowest first)"),
                               rows))
            out.append(Section(name, groups, scale))
        return out

    @property
    def what(self) -> str:
        return f"activation of the unit of {self.layer} at each token"

    def sheet(self) -> np.ndarray:
        if not hasattr(self, "_sheet"):
            self._sheet = rows_sheet(self.sections(), self.what, title=self.title())
        return self._sheet

    @property
    def images(self) -> torch.Tensor:
        return torch.from_numpy(self.sheet().copy()).permute(2, 0, 1)[None].float() / 255

    def record(self) -> dict:
        return {"model": self.model, "layer": self.layer, "units": self.units, "view": self.view,
                "channels": self.channels, "source": self.source, "texts": self.count, "k": self.k,
                "window": self.window,
                "units_found": [{"unit": format_units(self.layer, [c]), "channel": c,
                                 "scale": {"low": s.low, "high": s.high, "signed": s.signed}, **e}
                                for c, e, s in zip(self.channels, self.entries, self.scales)],
                "notes": self.notes, "chunks_reused": self.reused, "chunks_computed": self.computed,
                "device": self.device}

    def write_files(self, out: Path) -> list[str]:
        rows_page(out / "examples.html", self.sections(), self.what, title=self.title(),
                  command=self.command, notes=self.notes)
        return ["examples.html"]


def _floats(values: Sequence) -> list[float]:
    return [float("nan") if v is None else float(v) for v in values]


def _round(x: float) -> float | None:
    return None if x != x else round(float(x), 6)


def _scale(values: np.ndarray) -> StripScale:
    """One colour scale over every finite value: signed around 0 when they hold both signs."""
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if lo < 0 < hi:
        return StripScale(-max(-lo, hi), max(-lo, hi), True)
    if hi - lo <= 1e-12:
        return StripScale(lo - 0.5, hi + 0.5, False)
    return StripScale(lo, hi, False)


def _setup(model: TokenModel, units: str | Units, texts, batch_size: int):
    if not isinstance(model, TokenModel):
        raise NnfeatError("token examples need a token model (a TokenModel); image models take --images")
    units = parse_units(units) if isinstance(units, str) else units
    if units.position is not None:
        raise NnfeatError(f"examples on a token model rank every token: give '{units.layer}' or "
                          f"'{units.layer}:CHANNELS', without @POSITION")
    if batch_size < 1:
        raise NnfeatError(f"--batch {batch_size} must be at least 1")
    if units.layer != "output":
        model.module(units.layer)  # an unknown layer: one line, before any work
    texts = texts if isinstance(texts, TextSet) else load_texts(list(texts))
    return units, texts


def _channels(units: Units, width: int) -> list[int]:
    if units.channels is None:
        return list(range(min(width, DEFAULT_UNITS)))
    bad = [c for c in units.channels if not 0 <= c < width]
    if bad:
        raise NnfeatError(f"channel {bad[0]} out of range for layer '{units.layer}': valid channels are "
                          f"0..{width - 1}")
    return list(units.channels)


def _pass(model: TokenModel, layer: str, texts: list[str]):
    """One forward pass: ((B, T, D) activations on the CPU, the batch whose tokens they belong to)."""
    batch = model.encode(texts)
    if model.kind != "seq2seq":
        act = capture_token_layer(model, layer, batch)
        _side(model, layer, act, batch, None)
        return act.cpu(), batch
    target = model.generate(batch, MAX_NEW)
    act = capture_token_layer(model, layer, batch, target.ids)
    _, shown = _side(model, layer, act, batch, target)
    return act.cpu(), shown


def _note(cut: list[int], count: int, max_length: int) -> list[str]:
    if not any(cut):
        return []
    first = next(i for i, n in enumerate(cut) if n)
    return [f"{sum(1 for n in cut if n)} of {count} texts are longer than the model's maximum of {max_length} "
            f"tokens: truncated (text {first} lost {cut[first]} tokens)"]


def _command(model: TokenModel, units: Units, texts: TextSet, **options) -> str:
    command = cli_command("examples", model.name, str(units), **options, weights=weights_flag(model))
    given = texts.command_options()
    if "text_file" in given:
        return command + f" --text-file {shlex.quote(given['text_file'])} --n {given['n']}"
    return command + "".join(f" --text {shlex.quote(t)}" for t in given["text"])


@torch.no_grad()
def token_units(model: TokenModel, units: str | Units, texts: TextSet | Sequence[str], *,
                batch_size: int = 64) -> TokenExamplesResult:
    """Each unit's activation at every token of each text (see the module docstring).

    Raises:
        NnfeatError: one line for an unknown layer, a layer without one vector per token, a position, a channel
            out of range or an empty text.
    """
    started = time.perf_counter()
    units, texts = _setup(model, units, texts, batch_size)
    model.encode(texts.texts)  # a text the tokenizer cannot take: one line, before any pass
    tokens, values, cut, channels = [], [], [], None
    for s in range(0, len(texts), batch_size):  # --batch texts per pass
        act, shown = _pass(model, units.layer, texts.texts[s:s + batch_size])
        channels = channels or _channels(units, act.shape[2])
        picked = act[:, :, channels]  # (B, T, C)
        for row, length in enumerate(shown.lengths):  # unpadding each text of the batch: result assembly
            values.append(picked[row, :length].T.numpy())  # (C, T_i)
            tokens.append(shown.tokens[row])
        cut += model.encode(texts.texts[s:s + batch_size]).truncated
    entries = [{"texts": [{"text": i, "line": texts.indices[i], "tokens": tokens[i],
                           "values": [_round(v) for v in values[i][c].tolist()]} for i in range(len(texts))]}
               for c in range(len(channels))]
    scales = [_scale(np.concatenate([v[c] for v in values])) for c in range(len(channels))]
    return TokenExamplesResult(model=model.name, layer=units.layer, units=str(units), channels=channels,
                               view="units", entries=entries, scales=scales, source=texts.source, count=len(texts),
                               notes=_note(cut, len(texts), model.max_length), device=str(model.device),
                               command=_command(model, units, texts), elapsed=time.perf_counter() - started)


def _corpus_digest(texts: TextSet) -> str:
    digest = hashlib.sha256()
    for text in texts.texts:  # hashing the corpus: once per run, text by text
        digest.update(text.encode("utf-8") + b"\n")
    digest.update(repr(texts.indices).encode())
    return digest.hexdigest()[:16]


@torch.no_grad()
def token_examples(model: TokenModel, units: str | Units, texts: TextSet | Sequence[str], *, k: int = DEFAULT_K,
                   window: int = DEFAULT_WINDOW, batch_size: int = 64, cache: str | Path | None = None
                   ) -> TokenExamplesResult:
    """Per unit the ``k`` top- and bottom-activating tokens of ``texts`` in their ``window`` (see the module
    docstring). ``batch_size`` texts make one chunk (one forward pass, one cache record); ``cache``: the folder
    of the stage's records (None: nothing cached).

    Raises:
        NnfeatError: one line for an unknown layer, a layer without one vector per token, a position, a
            channel out of range, ``k`` / ``window`` out of range, an empty text, or a seq2seq model.
    """
    started = time.perf_counter()
    units, texts = _setup(model, units, texts, batch_size)
    if k < 1 or not 0 <= window <= MAX_WINDOW:
        raise NnfeatError(f"--k must be at least 1 and --window 0..{MAX_WINDOW}; got --k {k}, --window {window}")
    if model.kind == "seq2seq":
        raise NnfeatError(f"{model.name} is an encoder-decoder model: contexts over a --text-file are for "
                          "encoders, classifiers and language models; give --text \"...\" for the units view")
    corpus = _corpus_digest(texts)
    base = corpus_key("token-examples", model.name, model.weights, units.layer, str(units), k, window, batch_size,
                      corpus)
    folder = Path(cache) / f"token-examples-{base}" if cache is not None else None
    width, measured = _layer_width(model, units.layer, texts.texts[0], folder, base)
    channels = _channels(units, width)
    if measured and folder is not None and current().writer:  # recorded once the channels are known good
        write_json(folder / "layer.json", {"key": base, "width": width})
    specials = torch.tensor(sorted({int(i) for i in model.tokenizer.specials.values() if i is not None}) or [-1])
    chunks = -(-len(texts) // batch_size)

    def compute(i: int) -> dict[str, Candidates]:
        part = texts.texts[i * batch_size:(i + 1) * batch_size]
        act, batch = _pass(model, units.layer, part)
        allowed = ~torch.isin(batch.ids.cpu(), specials)
        found = chunk_candidates(act, batch.mask, channels, k, window, offset=i * batch_size, allowed=allowed)
        cut = torch.tensor(batch.truncated)
        first = int(cut.ne(0).long().argmax()) if bool(cut.any()) else -1
        found["truncated"] = np.array([int(cut.ne(0).sum()), first + i * batch_size if first >= 0 else -1,
                                       int(cut[first]) if first >= 0 else 0], dtype=np.int64)
        return found

    key = corpus_key(base, channels)
    shapes = {f"{side}_{name}": (len(channels), k, *((2 * window + 1,) if name == "context" else ()))
              for side in SIDES for name in ("value", "text", "position", "context")}
    shapes["truncated"] = (3,)  # per chunk: texts cut at the maximum length, the first, its lost tokens
    found, records, computed = collect_token_candidates(compute, chunks, folder, key, shapes, k)
    chosen = sorted({int(t) for side in SIDES for t in found[side].text.reshape(-1) if t >= 0})
    tokens = dict(zip(chosen, model.encode([texts.texts[t] for t in chosen]).tokens)) if chosen else {}
    entries = [{side: _entries(found[side], c, texts, tokens, window) for side in SIDES}
               for c in range(len(channels))]
    scales = [_scale(np.concatenate([found[side].context[c].reshape(-1) for side in SIDES]))
              for c in range(len(channels))]
    return TokenExamplesResult(model=model.name, layer=units.layer, units=str(units), channels=channels,
                               view="contexts", entries=entries, scales=scales, source=texts.source, count=len(texts),
                               k=k, window=window, notes=_truncation_note(records, len(texts), model.max_length),
                               reused=chunks - computed, computed=computed, device=str(model.device),
                               command=_command(model, units, texts, k=k, window=window),
                               elapsed=time.perf_counter() - started)


def _layer_width(model: TokenModel, layer: str, text: str, folder: Path | None, key: str) -> tuple[int, bool]:
    """(D of the layer's (B, T, D) output, whether it was measured now): from ``folder/layer.json`` when it was
    recorded under ``key``, else from one pass over ``text`` (the caller records it), so a cached run makes no
    forward pass at all."""
    path = None if folder is None else folder / "layer.json"
    if path is not None and path.is_file():
        try:
            found = read_json(path)
            if found.get("key") == key and isinstance(found.get("width"), int) and found["width"] > 0:
                return found["width"], False
        except (OSError, ValueError, AttributeError):
            pass  # a damaged record: measured again
    return int(_pass(model, layer, [text])[0].shape[2]), True


def _truncation_note(records: list[dict], count: int, max_length: int) -> list[str]:
    cut = np.stack([np.asarray(r["truncated"]) for r in records])  # (chunks, 3)
    if not cut[:, 0].any():
        return []
    first = cut[cut[:, 0] > 0][0]
    return [f"{int(cut[:, 0].sum())} of {count} texts are longer than the model's maximum of {max_length} tokens: "
            f"truncated (text {int(first[1])} lost {int(first[2])} tokens)"]


def _entries(found: Candidates, c: int, texts: TextSet, tokens: dict[int, list[str]], window: int) -> list[dict]:
    """Channel ``c``'s candidates as JSON-ready entries (the context's tokens cut from the text's tokens)."""
    out = []
    for r in range(found.value.shape[1]):  # k entries of one unit: result assembly
        t = int(found.text[c, r])
        if t < 0:
            continue
        p = int(found.position[c, r])
        start, stop = max(0, p - window), min(len(tokens[t]), p + window + 1)
        values = found.context[c, r, start - (p - window):stop - (p - window)]
        out.append({"value": _round(found.value[c, r]), "text": t, "line": texts.indices[t], "position": p,
                    "token": tokens[t][p], "tokens": tokens[t][start:stop], "centre": p - start,
                    "values": [_round(v) for v in values.tolist()]})
    return out
