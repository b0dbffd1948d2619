"""``attention`` on token models: every head's query x key weights over the tokens of texts, with scores.

For each text: the model view (the layers x heads grid of attention matrices, one colour scale, or with
``scale="per-map"`` one per head, its limits under its cell), the head view
(an offline page of token-to-token lines with hover, and its SVG), and for an encoder-decoder model the source x
target cross attention of the best-aligned head (the NMT figure) and its rows over decoding steps. Beside every
head, its scores (:mod:`nnfeat.analysis.head_scores`): previous-token, diagonal and first-token (sink) on the
texts; induction and duplicate-token on repeated random tokens (:func:`~nnfeat.analysis.head_probes.induction_probe`);
for ``dates-seq2seq`` the share of output fields whose cross-attention peak lies in the source span that wrote
them (:func:`~nnfeat.analysis.head_probes.dates_alignment_probe`).
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from nnfeat.analysis.head_probes import dates_alignment_probe, induction_probe, input_side
from nnfeat.analysis.head_scores import head_score_table
from nnfeat.analysis.token_attention import attention_kind, token_rollout
from nnfeat.analysis.token_capture import capture_token_attention
from nnfeat.errors import NnfeatError
from nnfeat.io import atomic_path
from nnfeat.models.text import TokenBatch, TokenModel
from nnfeat.ops.results import Result, cli_command, weights_flag
from nnfeat.texts import TextSet, load_texts
from nnfeat.views.head_view import head_view_html, head_view_svg
from nnfeat.views.token_attention_page import (MODEL_SCALES, cross_attention_png, model_view_figure, model_view_png,
                                               steps_png)

#: decoding steps at most when a seq2seq model decodes greedily
MAX_NEW = 64


@dataclass
class TokenAttentionResult(Result):
    """Attention of a token model over texts.

    Attributes:
        model: the model's name; ``kind`` its kind (encoder, classifier, lm, seq2seq).
        texts: the texts; ``tokens`` their input tokens as the tokenizer spells them.
        target_tokens: seq2seq: per text the tokens the decoder produces, one per decoding step (generated, or
            from ``target_texts``); ``decoder_inputs`` the decoder's input tokens (bos first, each step's input).
        generated: seq2seq: the decoded texts when the model decoded greedily, else None.
        weights: ``{layer: (B, H, Tq, Tk)}`` on the CPU, padded keys 0; ``kinds`` ``{layer: (kind, side)}``.
        scores: ``{layer: {score: [one float per head]}}``; ``probes``: what each probe pass was.
        rollout: (B, T, T) attention rollout over the input side's self-attention, or None.
        notes: lines said once (truncation, ...).
    """

    kind_of_model: str
    model: str
    texts: list[str]
    tokens: list[list[str]]
    mask: torch.Tensor
    weights: dict[str, torch.Tensor]
    kinds: dict[str, tuple[str, str]]
    scores: dict[str, dict[str, list[float]]]
    probes: dict[str, str]
    target_tokens: list[list[str]] | None = None
    decoder_inputs: list[list[str]] | None = None
    target_mask: torch.Tensor | None = None
    generated: list[str] | None = None
    rollout: torch.Tensor | None = None
    notes: list[str] = field(default_factory=list)
    source: str = "text"
    indices: list[int] = field(default_factory=list)
    device: str = "cpu"
    command: str | None = None
    elapsed: float = 0.0
    #: write every layer's (B, H, Tq, Tk) weights into ``attention.npz`` (float32; 70 MB for minilm at 512 tokens)
    save_weights: bool = False
    #: the model views' and decoding-step figures' colour scale: ``figure`` (one) or ``per-map`` (one per head)
    scale: str = "figure"

    kind = "attention"

    # -- what views take --------------------------------------------------------------------------------
    def layers_of(self, side: str) -> list[str]:
        """The layers of ``side``: ``input`` (self attention over the input), ``decoder`` (a decoder's own self
        attention) or ``cross``."""
        pick = {"input": lambda k, s: input_side(k, s), "decoder": lambda k, s: k == "self" and s == "decoder",
                "cross": lambda k, s: k == "cross"}[side]
        return [name for name, (k, s) in self.kinds.items() if pick(k, s)]

    def stack(self, layers: Sequence[str], i: int) -> torch.Tensor:
        """(L, H, Tq, Tk) weights of text ``i`` over ``layers``, cut to its real tokens."""
        tq, tk = self._lengths(layers[0], i)
        return torch.stack([self.weights[name][i, :, :tq, :tk] for name in layers])

    def _lengths(self, layer: str, i: int) -> tuple[int, int]:
        kind, side = self.kinds[layer]
        src = int(self.mask[i].sum())
        tgt = int(self.target_mask[i].sum()) if self.target_mask is not None else src
        if kind == "cross":
            return tgt, src
        return (tgt, tgt) if side == "decoder" else (src, src)

    def best_cross_head(self) -> tuple[str, int] | None:
        """The cross-attention (layer, head) with the highest alignment score (else the last layer's head 0)."""
        cross = self.layers_of("cross")
        if not cross:
            return None
        scored = [(s, layer, h) for layer in cross for h, s in enumerate(self.scores.get(layer, {}).get("alignment", []))]
        return (max(scored)[1], max(scored)[2]) if scored else (cross[-1], 0)

    # -- the Result protocol ------------------------------------------------------------------------------
    @property
    def images(self) -> torch.Tensor:
        return torch.from_numpy(self.sheet()).permute(2, 0, 1)[None].float() / 255

    def sheet(self) -> np.ndarray:
        layers = self.layers_of("input") or list(self.weights)
        figure = model_view_figure(self.stack(layers, 0), *self._axes(layers[0], 0), layer_names=layers,
                                   scores=_only(self.scores, layers), title=self.title(), scale=self.scale)
        return figure.image

    def title(self) -> str:
        return f"{self.model}: attention over {len(self.texts)} text{'s' if len(self.texts) != 1 else ''}"

    def _axes(self, layer: str, i: int) -> tuple[list[str], list[str]]:
        kind, side = self.kinds[layer]
        src = self.tokens[i]
        if kind == "cross":
            return self.target_tokens[i], src
        return (self.decoder_inputs[i],) * 2 if side == "decoder" else (src, src)

    def record(self) -> dict:
        return {"model": self.model, "model_kind": self.kind_of_model, "source": self.source,
                "indices": self.indices, "texts": self.texts, "tokens": self.tokens,
                "target_tokens": self.target_tokens, "decoder_inputs": self.decoder_inputs,
                "generated": self.generated,
                "layers": [{"name": n, "kind": k, "side": s, "heads": int(self.weights[n].shape[1])}
                           for n, (k, s) in self.kinds.items()],
                "scores": self.scores, "probes": self.probes, "notes": self.notes, "device": self.device,
                "rollout": self.rollout is not None, "scale": self.scale,
                "best_cross_head": list(self.best_cross_head()) if self.best_cross_head() else None}

    def write_files(self, out: Path) -> list[str]:
        files = []
        for i in range(len(self.texts)):  # one set of figures per text
            for side, stem in (("input", "model-view"), ("decoder", "decoder-view"), ("cross", "cross-view")):
                layers = self.layers_of(side)
                if not layers:
                    continue
                tq, tk = self._axes(layers[0], i)
                stack, scores = self.stack(layers, i), _only(self.scores, layers)
                model_view_png(stack, tq, tk, out / f"{stem}-{i}.png", layer_names=layers, scores=scores,
                               scale=self.scale)
                head_view_html(stack, tq, tk, out / f"{stem}-{i}.html", layer_names=layers, scores=scores,
                               title=f"{self.model}: {stem.replace('-', ' ')} of text {i}")
                head_view_svg(stack[-1], tq, tk, out / f"{stem}-{i}.svg", title=f"{layers[-1]}, every head")
                files += [f"{stem}-{i}.png", f"{stem}-{i}.html", f"{stem}-{i}.svg"]
            if self.rollout is not None:
                n = int(self.mask[i].sum())
                roll = self.rollout[i, :n, :n][None, None]
                model_view_png(roll, self.tokens[i], self.tokens[i], out / f"rollout-{i}.png",
                               layer_names=["rollout (Abnar & Zuidema 2020)"])
                files.append(f"rollout-{i}.png")
            best = self.best_cross_head()
            if best is not None:
                layer, head = best
                tq, tk = self._axes(layer, i)
                w = self.stack([layer], i)[0]  # (H, steps, source tokens)
                cross_attention_png(w[head], tk, tq, out / f"cross-{i}.png",
                                    title=f"{layer} head {head} (best aligned)")
                steps_png(w, tk, tq, out / f"steps-{i}.png", title=f"{layer}: every head, step by step",
                          scale=self.scale)
                files += [f"cross-{i}.png", f"steps-{i}.png"]
        if not self.save_weights:
            return files
        arrays = {name: w.numpy() for name, w in self.weights.items()}
        with atomic_path(out / "attention.npz") as tmp, open(tmp, "wb") as handle:
            np.savez_compressed(handle, mask=self.mask.numpy(), **arrays)
        return [*files, "attention.npz"]


def _only(scores: dict, layers: Sequence[str]) -> dict:
    return {name: scores[name] for name in layers if name in scores}


def token_attention(model: TokenModel, texts: TextSet | Sequence[str], *, target_texts: Sequence[str] | None = None,
                    layers: str | Sequence[str] | None = None, rollout: bool = False, seed: int = 0,
                    save_weights: bool = False, scale: str = "figure") -> TokenAttentionResult:
    """Attention of ``model`` (a :class:`~nnfeat.models.text.TokenModel`) over ``texts``.

    Args:
        texts: a :class:`~nnfeat.texts.TextSet` or a list of texts.
        target_texts: seq2seq: the decoder side per text (default: greedy decoding, recorded as ``generated``).
        layers: attention layer names (comma-separated or a list) to keep; default every layer.
        rollout: add attention rollout over the input side's self-attention layers.
        seed: the induction probe's random tokens.
        save_weights: ``.save`` also writes the weights (``attention.npz``).
        scale: ``figure`` (one colour scale per figure, default) or ``per-map`` (the model views and the decoding-step
            figure give each head its own 0..max, written under its cell / beside its name).

    Raises:
        NnfeatError: one line for no texts, a text the tokenizer cannot spell, a model without readable
            attention, an unknown layer, or target texts given to a model that is not seq2seq.
    """
    started = time.perf_counter()
    if scale not in MODEL_SCALES:
        raise NnfeatError(f"unknown scale '{scale}': use figure (one colour scale per figure) or per-map (one per head)")
    texts = texts if isinstance(texts, TextSet) else load_texts(list(texts))
    if target_texts is not None and model.kind != "seq2seq":
        raise NnfeatError(f"{model.name} is a {model.kind} model: target texts are for encoder-decoder models")
    batch = model.encode(texts.texts)
    notes = [n for n in (batch.note(model.max_length),) if n]
    decoder, generated, target, produced = None, None, None, None
    if model.kind == "seq2seq":
        target = (model.encode(list(target_texts), tokenizer=model.target_tokenizer) if target_texts is not None
                  else model.generate(batch, MAX_NEW))
        generated = None if target_texts is not None else target.texts
        produced = [t[1:] for t in target.tokens]
        target = _decoder_inputs(target, model.target_tokenizer.id_of("pad") or 0)
        produced = [p[:len(t)] for p, t in zip(produced, target.tokens)]
        decoder = target.ids
    captured = capture_token_attention(model, batch, decoder)
    captured = _select(captured, layers, model.name)
    kinds = {name: attention_kind(name) for name in captured}
    scores, probes = _scores(model, captured, kinds, batch, target, seed)
    roll = None
    if rollout:
        own = [captured[n] for n, (k, s) in kinds.items() if input_side(k, s)]
        roll = token_rollout(own, batch.mask).cpu() if own else None
    command = cli_command("attention", model.name, **_text_options(texts), seed=seed or None,
                          layer=",".join(layers) if isinstance(layers, (list, tuple)) else layers,
                          rollout=rollout, scale=None if scale == "figure" else scale, weights=weights_flag(model),
                          save_weights=save_weights)
    given = texts.texts if texts.source == "text" else ()
    for flag, values in (("--text", given), ("--target-text", target_texts or ())):
        for value in values:
            command += f" {flag} {shlex.quote(value)}"
    return TokenAttentionResult(
        kind_of_model=model.kind, model=model.name, texts=texts.texts, tokens=batch.tokens, mask=batch.mask.cpu(),
        weights={n: w.cpu() for n, w in captured.items()}, kinds=kinds, scores=scores, probes=probes,
        target_tokens=produced, decoder_inputs=None if target is None else target.tokens,
        target_mask=None if target is None else target.mask.cpu(), generated=generated, rollout=roll, notes=notes,
        source=texts.source, indices=texts.indices, device=str(model.device), command=command,
        elapsed=time.perf_counter() - started, save_weights=save_weights, scale=scale)


def _decoder_inputs(target: TokenBatch, pad: int) -> TokenBatch:
    """The decoder's inputs for teacher forcing: each row without its last token (the decoder input position t
    predicts token t + 1), padded with ``pad``; tokens spelled as the inputs are."""
    lengths = target.mask.sum(1) - 1
    keep = torch.arange(target.ids.shape[1], device=target.ids.device)[None] < lengths[:, None]
    width = int(lengths.max())
    ids = torch.where(keep, target.ids, torch.full_like(target.ids, pad))[:, :width]
    tokens = [t[:int(n)] for t, n in zip(target.tokens, lengths)]
    return TokenBatch(ids, keep[:, :width], tokens, target.texts, [])


def _text_options(texts: TextSet) -> dict:
    options = texts.command_options()
    return {"text_file": options["text_file"], "n": options["n"]} if "text_file" in options else {}


def _select(captured: dict[str, torch.Tensor], layers, name: str) -> dict[str, torch.Tensor]:
    if layers is None:
        return captured
    wanted = [w.strip() for w in (layers.split(",") if isinstance(layers, str) else layers) if w.strip()]
    unknown = [w for w in wanted if w not in captured]
    if unknown:
        raise NnfeatError(f"'{unknown[0]}' is not an attention layer of {name}; its attention layers: "
                          f"{', '.join(list(captured)[:6])}{', ...' if len(captured) > 6 else ''}")
    return {w: captured[w] for w in wanted}


def _scores(model: TokenModel, captured, kinds, batch: TokenBatch, target: TokenBatch | None, seed: int):
    own = {n: w for n, w in captured.items() if input_side(*kinds[n])}
    table = head_score_table(own, batch.mask) if own and max(batch.lengths) > 1 else {}
    if target is not None:
        dec = {n: w for n, w in captured.items() if kinds[n] == ("self", "decoder")}
        if dec and max(len(t) for t in target.tokens) > 1:
            table.update(head_score_table(dec, target.mask))
    probes = {"previous_token, diagonal, first_token": "the texts"}
    induction, period, start = induction_probe(model, seed=seed)
    induction = {n: w for n, w in induction.items() if n in captured}
    if induction:
        for layer, row in head_score_table({}, induction_by_layer=induction, period=period, start=start).items():
            table.setdefault(layer, {}).update(row)
        probes["induction, duplicate"] = (f"{induction[next(iter(induction))].shape[0]} sequences of {period} random "
                                          f"tokens repeated twice (seed {seed})")
    if model.name == "dates-seq2seq":
        cross, spans, _fields = dates_alignment_probe(model)
        cross = {n: w for n, w in cross.items() if n in captured}
        for layer, row in head_score_table({}, cross_by_layer=cross, spans=spans).items():
            table.setdefault(layer, {}).update(row)
        probes["alignment"] = "200 held-out generated dates: share of output fields whose peak is in their source span"
    order = list(captured)
    return {n: table[n] for n in order if n in table}, probes


__all__ = ["TokenAttentionResult", "token_attention"]
