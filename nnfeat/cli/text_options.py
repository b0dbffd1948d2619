"""The options of commands that take text: ``--text`` (repeatable), ``--text-file``, ``--target-text``, and
what they mean for a token model (see :mod:`nnfeat.texts` and :mod:`nnfeat.models.text`)."""

from __future__ import annotations

import argparse

from nnfeat.errors import NnfeatError
from nnfeat.models.text import TokenModel
from nnfeat.texts import TextSet, load_texts


def add_texts(p: argparse.ArgumentParser, *, target: bool = False) -> None:
    """``--text``, ``--text-file`` (and, for seq2seq models, ``--target-text``); ``--n``/``--seed`` are the image
    options' own and mean the same for texts."""
    p.add_argument("--text", action="append", default=None, metavar="TEXT",
                   help="a text for a token model (repeatable: --text \"a\" --text \"b\")")
    p.add_argument("--text-file", default=None, metavar="FILE",
                   help="a UTF-8 file of texts for a token model, one a line (blank lines skipped; --n draws a "
                        "sample from --seed)")
    if target:
        p.add_argument("--target-text", action="append", default=None, metavar="TEXT",
                       help="encoder-decoder models: the decoder's text for each --text (repeatable, in order; "
                            "default: greedy decoding)")


def has_texts(args) -> bool:
    return getattr(args, "text", None) is not None or getattr(args, "text_file", None) is not None


def check_inputs(args, model) -> None:
    """One line when a token model gets images or no text, or an image model gets text."""
    token = isinstance(model, TokenModel)
    if token and getattr(args, "images", None) is not None:
        raise NnfeatError(f"{model.name} is a token model: give it text (--text \"...\" or --text-file FILE), "
                          "not --images")
    if token and not has_texts(args):
        raise NnfeatError(f"{model.name} is a token model: give it text with --text \"...\" (repeatable) or "
                          "--text-file FILE")
    if not token and has_texts(args):
        raise NnfeatError(f"{model.name} takes images, not text: give --images SRC (--text and --text-file are "
                          "for token models)")
    targets = getattr(args, "target_text", None)
    if targets is not None and (not token or model.kind != "seq2seq"):
        raise NnfeatError("--target-text is for encoder-decoder (seq2seq) models; this one is not")


def texts_from_args(args, *, default_n: int | None = None) -> TextSet:
    """The ``--text``/``--text-file`` texts, ``--n`` of them (default ``default_n`` or all, whichever is fewer)
    drawn from ``--seed``; ``--target-text`` must give one text per text."""
    source = load_texts(getattr(args, "text", None), getattr(args, "text_file", None), seed=getattr(args, "seed", 0))
    n = getattr(args, "n", None)
    if n is None and default_n is not None and len(source) > default_n:
        n = default_n
    texts = load_texts(getattr(args, "text", None), getattr(args, "text_file", None), n=n,
                       seed=getattr(args, "seed", 0)) if n is not None else source
    targets = getattr(args, "target_text", None)
    if targets is not None and len(targets) != len(texts):
        raise NnfeatError(f"{len(targets)} --target-text for {len(texts)} texts: give one target text per text")
    return texts


__all__ = ["add_texts", "check_inputs", "has_texts", "texts_from_args"]
