"""``saliency`` on token models: which input tokens (and words) a token model's score depends on.

For each text: its tokens coloured once per method (``tokens-<i>.png``), for lm and seq2seq models the matrix of
explained output tokens x input tokens (``matrix-<i>.png``, inseq's view; one per further method as
``matrix-<i>-<method>.png``), and one offline page of every text (``index.html``, raw values on hover). The
record ``saliency.json`` holds per text the tokens, the words (pieces summed, see
:mod:`nnfeat.analysis.token_words`), every method's token and word scores, the target, the baseline and the
aggregation.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from nnfeat.analysis.token_checks import attention_check, causal_check, randomization_check
from nnfeat.analysis.token_saliency import TOKEN_SALIENCY, as_matrix, parse_token_methods, \
    row_attributions
from nnfeat.analysis.token_sanity import verdicts
from nnfeat.analysis.token_targets import MAX_STEPS, make_target
from nnfeat.analysis.token_words import AGGREGATION, aggregate_words, word_groups, word_text
from nnfeat.errors import NnfeatError
from nnfeat.io import save_image
from nnfeat.models.text import TokenModel
from nnfeat.ops.results import Result, cli_command, weights_flag
from nnfeat.texts import TextSet, load_texts
from nnfeat.views.sheets import stack_rows
from nnfeat.views.token_saliency_page import saliency_html, saliency_matrix_png, saliency_tokens_figure

#: the most texts drawn on the contact sheet ``saliency.png``
SHEET_TEXTS = 4


@dataclass
class TokenSaliencyResult(Result):
    """Token saliency of a token model over texts.

    Attributes:
        model, kind_of_model: the model's name and kind.
        texts: the texts; ``tokens`` per text the input tokens the values run over (lm: the text and its
            explained continuation).
        methods: method names in order; ``values``: method -> per text a (T,) array (one-step targets) or a
            (K, T) array (lm, seq2seq: one row per explained output token).
        step_tokens: lm / seq2seq: per text the K explained output tokens.
        words: per text ``(word, [token positions])``; ``word_values``: method -> per text (W,) or (K, W).
        target: the target's record; ``describe`` its line.
        checks: method -> its numbers: mean ``deletion`` / ``insertion`` AUC and the random ranking's
            (``random_deletion``, ``random_insertion``), per text, the ``randomization`` summary (``sanity``) and
            ``verdicts`` (one line per check, passed or FAILED), ``attention``: median Kendall tau with the last
            attention layer and rollout (:func:`nnfeat.analysis.token_checks.attention_check`).
        settings: baseline, steps, samples, noise, window, seed.
    """

    model: str
    kind_of_model: str
    texts: list[str]
    tokens: list[list[str]]
    methods: list[str]
    values: dict[str, list[np.ndarray]]
    words: list[list[tuple[str, list[int]]]]
    word_values: dict[str, list[np.ndarray]]
    target: dict
    describe: str
    settings: dict
    step_tokens: list[list[str]] | None = None
    checks: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    source: str = "text"
    indices: list[int] = field(default_factory=list)
    device: str = "cpu"
    command: str | None = None
    elapsed: float = 0.0

    kind = "saliency"
    run_fields = ("device",)

    @property
    def signed(self) -> bool:
        return any(TOKEN_SALIENCY[m].signed for m in self.methods)

    def shown(self, i: int) -> np.ndarray:
        """(methods, T) the values drawn for text ``i``: multi-step values summed over the steps."""
        rows = [self.values[m][i] for m in self.methods]
        return np.stack([r.sum(0) if r.ndim == 2 else r for r in rows])

    def _what(self) -> str:
        return self.describe + (", summed over the explained tokens" if self.step_tokens is not None else "")

    def figure(self, i: int) -> np.ndarray:
        return saliency_tokens_figure(self.tokens[i], self.shown(i), self.methods, signed=self.signed,
                                      title=f"text {i}: {self.model}, {self._what()}", what="attribution")

    @property
    def images(self) -> torch.Tensor:
        return torch.from_numpy(self.sheet()).permute(2, 0, 1)[None].float() / 255

    def sheet(self) -> np.ndarray:
        return stack_rows([self.figure(i) for i in range(min(len(self.texts), SHEET_TEXTS))])

    def title(self) -> str:
        return f"{self.model}: token saliency ({', '.join(self.methods)}) over {len(self.texts)} text" + \
            ("s" if len(self.texts) != 1 else "")

    def record(self) -> dict:
        per_text = []
        for i, text in enumerate(self.texts):  # the record: one entry per text
            entry = {"text": text, "tokens": self.tokens[i],
                     "words": [{"word": w, "tokens": g} for w, g in self.words[i]],
                     "scores": {m: _rounded(self.values[m][i]) for m in self.methods},
                     "word_scores": {m: _rounded(self.word_values[m][i]) for m in self.methods}}
            if self.step_tokens is not None:
                entry["explained_tokens"] = self.step_tokens[i]
            per_text.append(entry)
        return {"model": self.model, "model_kind": self.kind_of_model, "modality": "tokens", "source": self.source,
                "indices": self.indices, "methods": self.methods,
                "signed": {m: TOKEN_SALIENCY[m].signed for m in self.methods}, "target": self.target,
                "target_description": self.describe, "settings": self.settings, "aggregation": AGGREGATION,
                "shape": "per text: (tokens,) or, for lm / seq2seq, (explained tokens, input tokens)",
                "checks": self.checks, "texts": per_text, "notes": self.notes, "device": self.device}

    def numbers_table(self) -> str:
        """The numbers as a short terminal table: per method its AUCs beside the random ranking's, and verdicts."""
        if not self.checks:
            return ""
        lines = [f"{'method':<22} {'deletion (lower better)':>24} {'insertion (higher better)':>26} "
                 f"{'tau attention (last/rollout)':>29}  verdict"]
        for m, c in self.checks.items():
            failed = [v.split(":")[0] for v in c["verdicts"] if "FAILED" in v]
            tau = c.get("attention", {})
            taus = "/".join("-" if tau.get(k) is None else f"{tau[k]:.2f}"
                            for k in ("kendall_tau_last", "kendall_tau_rollout"))
            lines.append(f"{m:<22} {c['deletion']:>9.3f} vs random {c['random_deletion']:.3f} "
                         f"{c['insertion']:>11.3f} vs random {c['random_insertion']:.3f} {taus:>29}  "
                         + ("FAILED " + ", ".join(failed) if failed else "passed " + ", ".join(
                             v.split(":")[0] for v in c["verdicts"])))
        return "\n".join(lines)

    def write_files(self, out: Path) -> list[str]:
        files = []
        for i in range(len(self.texts)):  # one set of figures per text
            save_image(out / f"tokens-{i}.png", self.figure(i))
            files.append(f"tokens-{i}.png")
            if self.step_tokens is None:
                continue
            for j, m in enumerate(self.methods):
                name = f"matrix-{i}.png" if j == 0 else f"matrix-{i}-{m}.png"
                saliency_matrix_png(self.values[m][i], self.tokens[i], self.step_tokens[i], out / name,
                                    signed=TOKEN_SALIENCY[m].signed, title=f"text {i}: {m}, {self.describe}")
                files.append(name)
        pages = [{"title": f"text {i}: {self.texts[i]}", "tokens": self.tokens[i],
                  "rows": {m: self.shown(i)[j] for j, m in enumerate(self.methods)}} for i in range(len(self.texts))]
        notes = [f"Model {self.model} ({self.kind_of_model}); explained: {self._what()}; baseline "
                 f"{self.settings['baseline']}.", f"Words: {AGGREGATION} (in saliency.json)."] + list(self.notes)
        notes += [f"{m}: " + "; ".join(c["verdicts"]) for m, c in self.checks.items()]
        notes += [f"{m}: median Kendall tau with attention ({c['attention']['layer']}, query {c['attention']['query']}): "
                  f"last layer {c['attention']['kendall_tau_last']}, rollout {c['attention']['kendall_tau_rollout']} "
                  "(agreement, not a check: attention need not explain)" for m, c in self.checks.items()
                  if "attention" in c]
        saliency_html(pages, out / "index.html", title=self.title(), signed=self.signed, notes=notes)
        return [*files, "index.html"]


def token_saliency(model: TokenModel, texts: TextSet | Sequence[str], methods: str | Sequence[str] = "gradient", *,
                   target: str | int | None = "pred", pair: str | None = None,
                   target_texts: Sequence[str] | None = None, baseline: str = "pad", steps: int = 32,
                   samples: int = 16, noise: float = 0.1, window: int = 3, seed: int = 0,
                   max_steps: int = MAX_STEPS, batch_size: int | None = None, numbers: bool = True,
                   sanity: bool = False) -> TokenSaliencyResult:
    """Token saliency of ``model`` over ``texts`` (see :mod:`nnfeat.analysis.token_saliency` for the methods and
    :mod:`nnfeat.analysis.token_targets` for the targets).

    Args:
        methods: names (comma-separated or a list; ``all``).
        target: classifier: a class index, name or ``pred``; other kinds take their own target (default).
        pair: sentence encoders: the second text (its cosine similarity with each text is explained).
        target_texts: seq2seq: the decoder text per text; lm: the continuation per text (default: greedy).
        baseline: ``pad``, ``mask`` or ``zero``; steps: integrated-gradients path points; samples, noise:
            smoothgrad; window: occlusion-span; seed: smoothgrad's noise; max_steps: greedy decoding's length.
        batch_size: rows per forward / backward pass (default None: 8,192 tokens' worth, 64 rows of 128 tokens;
            :func:`nnfeat.analysis.token_saliency.rows_per_pass`).
        numbers: deletion and insertion AUC over tokens beside a seeded random ranking, per method (default on:
            a few batched forward passes per text; :func:`nnfeat.analysis.token_checks.causal_check`).
        sanity: also the cascading randomization test per method (one attribution pass per layer).

    Raises:
        NnfeatError: one line for an unknown method or baseline, a target the model does not take, a class out
            of range, ``pair`` on a model that is not a sentence encoder, a model without a named embedding.
    """
    started = time.perf_counter()
    names = parse_token_methods(methods)
    for name, value, low in (("steps", steps, 1), ("samples", samples, 1), ("window", window, 1),
                             ("max_steps", max_steps, 1), ("batch_size", batch_size, 1)):
        if value is not None and int(value) < low:
            raise NnfeatError(f"{name} must be at least {low}; got {value}")
    if not model.embedding:
        raise NnfeatError(f"{model.name} names no input embedding module: token saliency needs one")
    texts = texts if isinstance(texts, TextSet) else load_texts(list(texts))
    batch = model.encode(texts.texts)
    notes = [n for n in (batch.note(model.max_length),) if n]
    resolved = make_target(model, batch, target, pair=pair, target_texts=target_texts, steps=max_steps)
    values: dict[str, list[np.ndarray]] = {}
    checks: dict[str, dict] = {}
    options = dict(baseline=baseline, steps=steps, samples=samples, noise=noise, seed=seed, window=window,
                   batch_size=batch_size)
    for name in names:  # one pass set per method
        rows = row_attributions(model, resolved, name, **options)
        values[name] = _per_text(as_matrix(rows, resolved).cpu(), resolved)
        if numbers or sanity:
            checks[name] = _checks(model, resolved, name, rows, options, sanity)
    tokens = _input_tokens(model, batch, resolved)
    values = {m: [_columns(v, resolved, i, len(t)) for i, (v, t) in enumerate(zip(vals, tokens))]
              for m, vals in values.items()}
    own = _input_tokens(model, batch, resolved.source_part())  # words: over the (source) text's own tokens
    groups = [word_groups(t, model.tokenizer) for t in own]
    words = [[(word_text(t, g, model.tokenizer), g) for g in gs] for t, gs in zip(own, groups)]
    word_values = {m: [aggregate_words(torch.from_numpy(v[..., :len(t)].copy()), g).numpy()
                       for v, t, g in zip(vals, own, groups)] for m, vals in values.items()}
    settings = {"baseline": baseline, "steps": steps, "samples": samples, "noise": noise, "window": window,
                "seed": seed, "ig_rule": "riemann_middle", "embedding": model.embedding}
    flags = dict(text_file=texts.source if texts.source != "text" else None,
                   n=len(texts) if texts.source != "text" else None, method=",".join(names),
                   target=None if target in (None, "pred") else target, pair=pair,
                   baseline=None if baseline == "pad" else baseline, alphas=None if steps == 32 else steps,
                   samples=None if samples == 16 else samples, window=None if window == 3 else window,
                   seed=seed or None, sanity=sanity or None, no_numbers=None if numbers or sanity else True,
                   weights=weights_flag(model))
    command = cli_command("saliency", model.name, **flags)
    if texts.source == "text":
        command += "".join(f" --text {shlex.quote(t)}" for t in texts.texts)
    command += "".join(f" --target-text {shlex.quote(t)}" for t in target_texts or ())
    return TokenSaliencyResult(
        model=model.name, kind_of_model=model.kind, texts=texts.texts, tokens=tokens, methods=names, values=values,
        words=words, word_values=word_values, target=resolved.record, describe=resolved.describe, settings=settings,
        step_tokens=resolved.step_tokens, checks=checks, notes=notes, source=texts.source, indices=texts.indices,
        device=str(model.device), command=command, elapsed=time.perf_counter() - started)


def _checks(model: TokenModel, target, method: str, rows: torch.Tensor, options: dict, sanity: bool) -> dict:
    """One method's numbers (:attr:`TokenSaliencyResult.checks`): deletion / insertion beside a random ranking,
    the randomization test with ``sanity``, and a verdict line per check."""
    causal = causal_check(model, target, rows, baseline=options["baseline"], seed=options["seed"])
    randomization = randomization_check(model, target, method, rows, **options) if sanity else None
    mean = lambda t: round(float(t.nanmean()), 4)  # noqa: E731
    out = {"deletion": mean(causal["method"]["deletion"]), "insertion": mean(causal["method"]["insertion"]),
           "random_deletion": mean(causal["random"]["deletion"]), "random_insertion": mean(causal["random"]["insertion"]),
           "per_row": {k: _rounded(causal["method"][k].cpu().numpy()) for k in ("deletion", "insertion")},
           "replaced_by": causal["replaced_by"], "steps": causal["method"]["steps"],
           "verdicts": [v.text for v in verdicts(causal, randomization)]}
    if randomization is not None:
        out["randomization"] = randomization.summary()
    agreement = attention_check(model, target, rows)
    if agreement is not None:  # per row Kendall tau with attention; its median over rows
        median = lambda t: None if t is None or bool(t.isnan().all()) else round(float(t.nanmedian()), 4)  # noqa
        out["attention"] = {"layer": agreement["layer"], "query": agreement["query"],
                            "kendall_tau_last": median(agreement["last"]),
                            "kendall_tau_rollout": median(agreement["rollout"]),
                            "per_row_last": _rounded(agreement["last"].cpu().numpy())}
    return out


def _rounded(values: np.ndarray) -> list:
    return np.round(values.astype(np.float64), 6).tolist()


def _per_text(matrix: torch.Tensor, target) -> list[np.ndarray]:
    """(B, T) or (B, K, T) -> per text (T,) or (K_i, T) float32 arrays."""
    if not target.multi_step:
        return [row.numpy().astype(np.float32) for row in matrix]
    return [matrix[i, :k].numpy().astype(np.float32) for i, k in enumerate(target.steps)]


def _input_tokens(model: TokenModel, batch, target) -> list[list[str]]:
    """Per text the tokens its values run over: the text's, then (lm) its continuation or (joint seq2seq rows)
    the decoder's input tokens."""
    if target.kind == "next":
        return [p + s for p, s in zip(batch.tokens, target.step_tokens)]
    if target.source_width is not None:
        return [p + d for p, d in zip(batch.tokens, target.decoder_tokens)]
    return batch.tokens


def _columns(values: np.ndarray, target, i: int, n: int) -> np.ndarray:
    """Text ``i``'s (..., T) values cut to its ``n`` tokens; joint rows: its source tokens, then its decoder
    inputs (taken from the columns after ``source_width``)."""
    if target.source_width is None:
        return values[..., :n]
    source = n - len(target.decoder_tokens[i])
    return np.concatenate([values[..., :source], values[..., target.source_width:target.source_width + n - source]],
                          -1)


__all__ = ["TokenSaliencyResult", "token_saliency"]
