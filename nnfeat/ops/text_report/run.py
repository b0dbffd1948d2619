"""The ``report`` of a token model: :func:`text_report` checks its settings, plans the stages and runs the missing
ones with the image report's machinery (:func:`nnfeat.ops.report.run.run_stages`: a record per finished stage,
digests of the files it vouches for, the manifest, the ``NNFEAT_REPORT_STOP_AFTER`` stop hook)."""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from nnfeat.analysis.token_saliency import parse_token_methods
from nnfeat.errors import NnfeatError
from nnfeat.models.text import TokenModel
from nnfeat.ops.project_tokens import METHODS as PROJECTION_METHODS
from nnfeat.ops.report.pages import read_png
from nnfeat.ops.report.plan import Stage
from nnfeat.ops.report.run import run_stages
from nnfeat.ops.results import check_out_dir, cli_command, weights_flag
from nnfeat.ops.text_report import stages as st
from nnfeat.ops.text_report.context import TextReportContext, texts_digest
from nnfeat.ops.text_report.pages import write_index
from nnfeat.ops.text_report.result import TextReportResult
from nnfeat.texts import TextSet, load_texts

DEFAULT_METHODS = "gradient,integrated-gradients"


def default_layers(model: TokenModel, widths: dict[str, tuple]) -> list[str]:
    """The first and the last block of the model: the children of its first ``nn.ModuleList`` whose every output
    is one vector per token (``widths``: {module: output shape without batch}); none when it has no such list."""
    for name, mod in model.net.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod):
            names = [f"{name}.{i}" if name else str(i) for i in range(len(mod))]
            if all(len(widths.get(n) or ()) == 2 for n in names):
                return list(dict.fromkeys([names[0], names[-1]]))
    return []


def _layers(model: TokenModel, layers: Sequence[str] | str | None, widths: dict[str, tuple]) -> list[str]:
    """``layers`` (a list or ``"a,b"``; None: :func:`default_layers`) checked: one-line errors before any work."""
    if layers is None:
        return default_layers(model, widths)
    names = [n.strip() for n in (layers.split(",") if isinstance(layers, str) else layers) if n.strip()]
    if not names:
        raise NnfeatError("--layers is empty: give layer names such as 'blocks.0,blocks.1' (see `nnfeat layers`)")
    for name in names:
        if ":" in name:
            raise NnfeatError(f"--layers takes layer names, not units: '{name}' (use --units-per-layer)")
        model.module(name)  # a one-line error for an unknown module
        if len(widths.get(name) or ()) != 2:
            raise NnfeatError(f"layer '{name}' gives no vector per token (output {widths.get(name)}): pick a layer "
                              "whose output is (batch, tokens, width)")
    if len(set(names)) != len(names):
        raise NnfeatError(f"--layers names a layer twice: {','.join(names)}")
    return names


def text_report(model: TokenModel, texts: TextSet | Sequence[str], out: str | Path, *,
                layers: Sequence[str] | str | None = None, units_per_layer: int = 4, examples_k: int = 5,
                window: int = 3, attention_n: int = 4, saliency_n: int = 8, methods: str | Sequence[str] =
                DEFAULT_METHODS, ig_steps: int = 16, embeddings_top: int = 200, neighbours: int = 3,
                projection_method: str = "pca", pair: str | None = None, unembed: str | None = None, seed: int = 0,
                batch: int = 64, progress: bool = True) -> TextReportResult:
    """Build (or finish) the report of the token model ``model`` over ``texts`` in the folder ``out``.

    Args:
        model: a :class:`~nnfeat.models.text.TokenModel`; texts: a :class:`~nnfeat.texts.TextSet` or texts.
        layers: the units' layers (list or ``"a,b"``); default the first and last block (:func:`default_layers`).
        units_per_layer: units 0..N-1 of each layer; examples_k, window: top / bottom contexts per unit and the
            tokens either side; attention_n, saliency_n: texts (a seeded sample) of the attention view and the
            logit lens, and of saliency; methods: token saliency methods; ig_steps: integrated-gradients points.
        embeddings_top: the most frequent tokens laid out; neighbours: how many of them get cosine neighbours;
        projection_method: pca | tsne | umap; pair: sentence encoders: the text whose similarity saliency explains
            (default the first text); unembed: the logit lens's unembedding of a model with no known one.
    Returns:
        :class:`TextReportResult` (``out/index.html`` is the entry page).
    """
    started = time.perf_counter()
    if not isinstance(model, TokenModel):
        raise NnfeatError(f"{getattr(model, 'name', type(model).__name__)} takes images: the text report is for "
                          "token models (use report with --images)")
    texts = texts if isinstance(texts, TextSet) else load_texts(list(texts))
    for name, value, least in (("units_per_layer", units_per_layer, 1), ("examples_k", examples_k, 1),
                               ("window", window, 0), ("attention_n", attention_n, 1), ("saliency_n", saliency_n, 1),
                               ("ig_steps", ig_steps, 1), ("embeddings_top", embeddings_top, 3),
                               ("neighbours", neighbours, 0), ("batch", batch, 1)):
        if int(value) < least:
            raise NnfeatError(f"--{name.replace('_', '-')} must be at least {least}; got {value}")
    if projection_method not in PROJECTION_METHODS:
        raise NnfeatError(f"unknown projection method '{projection_method}': use {', '.join(PROJECTION_METHODS)}")
    names = parse_token_methods(methods)
    if pair is not None and model.kind != "encoder":
        raise NnfeatError(f"--pair is for sentence encoders; {model.name} is a{'n' if model.kind[0] in 'aeiou' else ''}"
                          f" {model.kind} model")
    if unembed is not None:
        model.module(unembed)
    model.encode(texts.texts)  # a text the tokenizer cannot take: one line, before any work
    widths = {name: shape for name, shape, _ in model.describe_layers(texts.texts[0])}
    units_layers = _layers(model, layers, widths)
    out = check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"kind": "text-report", "model": model.name, "weights": getattr(model, "weights", None),
                "model_kind": model.kind, "source": texts.source, "n": len(texts), "texts": texts_digest(texts),
                "layers": units_layers, "units_per_layer": int(units_per_layer),
                "channels": {n: min(int(units_per_layer), int(widths[n][-1])) for n in units_layers},
                "examples_k": int(examples_k), "window": int(window), "attention_n": int(attention_n),
                "saliency_n": int(saliency_n), "methods": names, "ig_steps": int(ig_steps),
                "embeddings_top": int(embeddings_top), "neighbours": int(neighbours),
                "projection_method": projection_method, "pair": pair, "unembed": unembed, "seed": int(seed),
                "batch": int(batch), "device": str(model.device)}
    ctx = TextReportContext(model=model, texts=texts, out=out, settings=settings)
    timings, notes = run_stages(ctx, plan(ctx), progress)
    attention = out / "attention" / "attention.png"
    key = read_png(attention)[None] if attention.is_file() else torch.zeros(0, 3, 1, 1)
    return TextReportResult(model=model.name, out=out, settings=settings, key_images=key, timings=timings,
                            notes=notes, elapsed=time.perf_counter() - started, command=_command(model, texts, ctx))


def plan(ctx: TextReportContext) -> list[Stage]:
    """Every stage, in order: graph, attention, embeddings, units per layer, saliency, logit lens, the index."""
    stages = [Stage("graph", st.graph_stage), Stage("attention", st.attention_stage),
              Stage("embeddings", st.embeddings_stage)]
    stages += [Stage(f"units:{layer}", st.units_stage, (layer,)) for layer in ctx.settings["layers"]]
    stages += [Stage("saliency", st.saliency_stage), Stage("logit-lens", st.logit_lens_stage),
               Stage("pages", write_index, optional=False)]
    return stages


def _command(model: TokenModel, texts: TextSet, ctx: TextReportContext) -> str:
    s = ctx.settings
    command = cli_command("report", model.name, text_file=None if texts.source == "text" else texts.source,
                          n=None if texts.source == "text" else len(texts), layers=",".join(s["layers"]) or None,
                          units_per_layer=s["units_per_layer"], seed=s["seed"] or None, pair=s["pair"],
                          unembed=s["unembed"], weights=weights_flag(model), out=str(ctx.out))
    if texts.source == "text":
        command += "".join(f" --text {shlex.quote(t)}" for t in texts.texts)
    return command


__all__ = ["text_report", "plan", "default_layers", "DEFAULT_METHODS"]
