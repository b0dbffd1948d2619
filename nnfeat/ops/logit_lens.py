"""``logit-lens``: what a decoder language model would predict if it stopped after each block (nostalgebraist
2020, "interpreting GPT: the logit lens").

Per text, layer and position: the residual stream after the layer, decoded through the model's final norm (found:
the normalisation layer whose output the unembedding reads; or ``final_norm``) and its unembedding (the model's
own, ``TokenModel.unembed``, or ``unembed``): the top-k tokens with their probabilities, and the rank and
probability of the actual next token (at the last position: of the model's own prediction). The last block's
lens reproduces the model's logits (bit for bit on tiny-lm; within float rounding of the layers' batched product
elsewhere, 1.2e-7 on a random 4-layer GPT-2); the record says how closely (``last_layer_gap``).
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from nnfeat.analysis.logit_lens import capture_lens, decode_lens, find_blocks, lens_readout
from nnfeat.errors import NnfeatError
from nnfeat.io import save_image
from nnfeat.models.text import TokenModel
from nnfeat.ops.results import Result, cli_command, weights_flag
from nnfeat.texts import TextSet, load_texts
from nnfeat.views.logit_lens_page import lens_colour_bar, lens_figure, lens_table_html
from nnfeat.views.sheets import stack_rows

DEFAULT_TOP = 5
#: texts shown on the sheet (every text has its own figure file)
SHEET_TEXTS = 4


@dataclass
class LogitLensResult(Result):
    """The logit lens of a model over texts.

    Attributes:
        model: the model's name; ``texts`` the texts, ``tokens`` their tokens (B lists of T_i).
        layers: the L layers read (their outputs are the residual stream); ``unembed``, ``final_norm`` (None:
            none) the modules that decode it, ``norm_source`` ``found`` / ``named`` / None.
        top_ids, top_probs: (L, B, T, k) the top-k tokens of each layer's lens and their probabilities.
        rank: (L, B, T) the rank (1 = top) of ``targets``; ``target_prob`` (L, B, T) its probability.
        targets: (B, T) the actual next token of each position; at each text's last position the model's own
            prediction. Positions past a text's end hold 0.
        top_tokens: per text (L, T_i, k) nested lists of the top tokens as the tokenizer spells them;
            ``target_tokens`` per text its T_i targets spelled.
        last_layer_gap: max |lens logits of the last layer - the model's logits| over every text and position.
    """

    model: str
    texts: list[str]
    tokens: list[list[str]]
    layers: list[str]
    unembed: str
    final_norm: str | None
    norm_source: str | None
    top_ids: torch.Tensor
    top_probs: torch.Tensor
    rank: torch.Tensor
    target_prob: torch.Tensor
    targets: torch.Tensor
    top_tokens: list[list[list[list[str]]]]
    target_tokens: list[list[str]]
    last_layer_gap: float
    vocab: int
    notes: list[str] = field(default_factory=list)
    source: str = "text"
    device: str = "cpu"
    command: str | None = None
    elapsed: float = 0.0

    kind = "logit-lens"
    run_fields = ("device",)

    @property
    def lengths(self) -> list[int]:
        return [len(t) for t in self.tokens]

    def summary(self) -> dict[str, list[float]]:
        """Per layer over every position that has an actual next token (not a text's last): ``mean_rank``,
        ``median_rank``, ``top1`` (share of positions whose top token is the next token), ``mean_prob``."""
        n = torch.tensor(self.lengths)
        keep = torch.arange(self.rank.shape[2])[None] < (n - 1)[:, None]  # (B, T)
        rank = self.rank[:, keep].float()  # (L, N)
        if rank.shape[1] == 0:
            empty = [float("nan")] * len(self.layers)
            return {"mean_rank": empty, "median_rank": empty, "top1": empty, "mean_prob": empty}
        return {"mean_rank": rank.mean(1).tolist(), "median_rank": rank.median(1).values.tolist(),
                "top1": (rank == 1).float().mean(1).tolist(), "mean_prob": self.target_prob[:, keep].mean(1).tolist()}

    def text_data(self, i: int) -> dict:
        """Text ``i`` as the views take it (plain lists)."""
        n = self.lengths[i]
        return {"text": self.texts[i], "tokens": self.tokens[i], "targets": self.target_tokens[i],
                "layers": self.layers, "top_tokens": self.top_tokens[i],
                "top_probs": self.top_probs[:, i, :n].tolist(), "rank": self.rank[:, i, :n].tolist(),
                "target_prob": self.target_prob[:, i, :n].tolist()}

    def figure(self, i: int, bar: bool = True) -> np.ndarray:
        """Text ``i``'s layers x positions figure, (H, W, 3) uint8."""
        n = self.lengths[i]
        top1 = [[row[t][0] for t in range(n)] for row in self.top_tokens[i]]
        return lens_figure(top1, self.top_probs[:, i, :n, 0], self.rank[:, i, :n], self.tokens[i],
                           self.target_tokens[i], self.layers, title=f"{self.model}: logit lens of text {i}",
                           bar=bar)

    # -- the Result protocol ------------------------------------------------------------------------------
    @property
    def images(self) -> torch.Tensor:
        return torch.from_numpy(self.sheet()).permute(2, 0, 1)[None].float() / 255

    def sheet(self) -> np.ndarray:
        figures = [self.figure(i, bar=False) for i in range(min(len(self.texts), SHEET_TEXTS))]
        return stack_rows([*figures, lens_colour_bar(max(f.shape[1] for f in figures))])

    def title(self) -> str:
        return f"{self.model}: logit lens over {len(self.texts)} text{'s' if len(self.texts) != 1 else ''}"

    def record(self) -> dict:
        return {"model": self.model, "source": self.source, "texts": self.texts, "tokens": self.tokens,
                "layers": self.layers, "unembed": self.unembed, "final_norm": self.final_norm,
                "norm_source": self.norm_source, "top": int(self.top_ids.shape[-1]), "vocab": self.vocab,
                "last_layer_gap": self.last_layer_gap, "summary": self.summary(), "notes": self.notes,
                "device": self.device,
                "per_text": [{"targets": self.target_tokens[i], "rank": self.rank[:, i, :n].tolist(),
                              "target_prob": [[round(p, 6) for p in row]
                                              for row in self.target_prob[:, i, :n].tolist()],
                              "top_tokens": self.top_tokens[i],
                              "top_probs": [[[round(p, 6) for p in cell] for cell in row]
                                            for row in self.top_probs[:, i, :n].tolist()]}
                             for i, n in enumerate(self.lengths)]}

    def write_files(self, out: Path) -> list[str]:
        files = []
        for i in range(len(self.texts)):  # one figure per text
            save_image(out / f"lens-{i}.png", self.figure(i))
            files.append(f"lens-{i}.png")
        norm = f"final norm {self.final_norm} ({self.norm_source})" if self.final_norm else "no final norm"
        notes = [f"layers: {', '.join(self.layers)}; decoded by {norm} then {self.unembed} (V = {self.vocab}); "
                 f"last layer's lens vs the model's logits: max difference {self.last_layer_gap:.3g}", *self.notes]
        lens_table_html([self.text_data(i) for i in range(len(self.texts))], out / "logit-lens.html",
                        title=self.title(), notes=notes, summary=self.summary())
        return [*files, "logit-lens.html"]


def logit_lens(model: TokenModel, texts: TextSet | Sequence[str], *, layers: str | Sequence[str] | None = None,
               unembed: str | None = None, final_norm: str | None = None, top: int = DEFAULT_TOP) -> LogitLensResult:
    """The logit lens of ``model`` over ``texts``.

    Args:
        model: a decoder :class:`~nnfeat.models.text.TokenModel` (kind ``lm``, or any kind with ``unembed``).
        texts: a :class:`~nnfeat.texts.TextSet` or a list of texts.
        layers: the modules whose outputs are the residual stream (names, comma-separated or a list); default the
            model's blocks (:func:`~nnfeat.analysis.logit_lens.find_blocks`).
        unembed: the module mapping the residual stream to vocabulary logits (default the model's own).
        final_norm: the norm applied before it (default: found, or none).
        top: how many top tokens per layer and position.

    Raises:
        NnfeatError: one line for a model that is not a token model or is encoder-decoder, a model with no known
            unembedding and no ``unembed``, an unknown module, a module whose output is not (B, T, D), an empty
            text, or ``top`` below 1.
    """
    started = time.perf_counter()
    if not isinstance(model, TokenModel):
        raise NnfeatError("the logit lens reads token models (decoder language models such as tiny-lm or hf:PATH); "
                          f"{getattr(model, 'name', 'this model')} takes images")
    if model.kind == "seq2seq":
        raise NnfeatError(f"{model.name} is an encoder-decoder model: the logit lens reads decoder-only language "
                          "models (tiny-lm, hf:PATH of a causal LM)")
    head = unembed or model.unembed
    if head is None:
        raise NnfeatError(f"{model.name} is a{'n' if model.kind[0] in 'aeiou' else ''} {model.kind} model with no "
                          "known unembedding: name the module that maps the residual stream to vocabulary logits "
                          "with --unembed MODULE")
    if int(top) < 1:
        raise NnfeatError(f"--top must be at least 1; got {top}")
    for name in (head, final_norm):
        if name:
            model.module(name)
    texts = texts if isinstance(texts, TextSet) else load_texts(list(texts))
    batch = model.encode(texts.texts)
    notes = [n for n in (batch.note(model.max_length),) if n]
    wanted = ([w.strip() for w in layers.split(",") if w.strip()] if isinstance(layers, str) else
              [str(w) for w in layers]) if layers is not None else None
    if wanted is not None and not wanted:
        raise NnfeatError("--layers is empty: name the residual stream's modules, e.g. blocks.0,blocks.1")
    for name in wanted or ():
        model.module(name)
    lengths = batch.mask.sum(1)
    first = int(lengths[0])
    names = wanted or find_blocks(model, batch.ids[:1, :first])
    parts, norm, source, gap, vocab = {}, final_norm, "named" if final_norm else None, 0.0, 0
    for length in sorted(set(lengths.tolist())):  # one pass per distinct length (no padding), not per text
        rows = (lengths == length).nonzero()[:, 0]
        ids = batch.ids[rows, :length]
        seen = capture_lens(model, ids, names, head, norm, find_norm=not parts)
        if not parts:
            norm, source = seen.final_norm, seen.norm_source
        lens = decode_lens(model, seen.residual, head, norm, vocab=seen.logits.shape[-1])
        gap = max(gap, float((lens[-1] - seen.logits).abs().max()))
        vocab = int(seen.logits.shape[-1])
        targets = torch.cat([ids[:, 1:], seen.logits[:, -1].argmax(-1)[:, None]], 1)
        parts[length] = (rows, targets, lens_readout(lens, targets, int(top)))
    result = _gather(parts, len(batch), int(lengths.max()), len(names))
    spell = model.tokenizer.spell
    top_tokens = [[[spell(cell) for cell in row] for row in result["top_ids"][:, i, :int(n)].tolist()]
                  for i, n in enumerate(lengths)]
    target_tokens = [spell(result["targets"][i, :int(n)].tolist()) for i, n in enumerate(lengths)]
    return LogitLensResult(
        model=model.name, texts=texts.texts, tokens=batch.tokens, layers=names, unembed=head, final_norm=norm,
        norm_source=source, top_ids=result["top_ids"], top_probs=result["top_probs"], rank=result["rank"],
        target_prob=result["target_prob"], targets=result["targets"], top_tokens=top_tokens,
        target_tokens=target_tokens, last_layer_gap=gap, vocab=vocab, notes=notes, source=texts.source,
        device=str(model.device), command=_command(model, texts, wanted, unembed, final_norm, int(top)),
        elapsed=time.perf_counter() - started)


def _gather(parts: dict, b: int, t: int, n_layers: int) -> dict[str, torch.Tensor]:
    """The per-length pieces put back into (L, B, T, ...) tensors (positions past a text's end 0) on the CPU."""
    any_part = next(iter(parts.values()))[2]
    k = any_part["top_ids"].shape[-1]
    out = {"top_ids": torch.zeros(n_layers, b, t, k, dtype=torch.long), "top_probs": torch.zeros(n_layers, b, t, k),
           "rank": torch.zeros(n_layers, b, t, dtype=torch.long), "target_prob": torch.zeros(n_layers, b, t),
           "targets": torch.zeros(b, t, dtype=torch.long)}
    for length, (rows, targets, read) in parts.items():  # one piece per distinct length
        rows = rows.cpu()
        out["targets"][rows, :length] = targets.cpu()
        for key in ("top_ids", "top_probs", "rank", "target_prob"):
            out[key][:, rows, :length] = read[key].cpu().to(out[key].dtype)
    return out


def _command(model: TokenModel, texts: TextSet, layers, unembed, final_norm, top: int) -> str:
    command = cli_command("logit-lens", model.name, layers=",".join(layers) if layers else None, unembed=unembed,
                          final_norm=final_norm, top=None if top == DEFAULT_TOP else top, weights=weights_flag(model))
    options = texts.command_options()
    if "text_file" in options:
        return command + f" --text-file {shlex.quote(options['text_file'])} --n {options['n']}"
    return command + "".join(f" --text {shlex.quote(t)}" for t in options["text"])


__all__ = ["DEFAULT_TOP", "LogitLensResult", "logit_lens"]
