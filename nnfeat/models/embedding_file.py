"""Embedding matrices from files: one (V, D) row per token of a vocabulary, for ``nnfeat project --embedding-file``.

Forms read by :func:`read_embedding_file` (the vocabulary's line i names row i):

* ``VECTORS.npy`` -- a (V, D) float array, with a vocabulary file (``vocab=FILE``, one token a line; default
  ``vocab.txt`` beside the array when there is one);
* ``WEIGHTS.safetensors:KEY`` -- the (V, D) tensor ``KEY`` of a safetensors file (say a transformer's
  ``embeddings.word_embeddings.weight``), with a vocabulary file as for ``.npy``; ``KEY`` may be left out when the
  file holds exactly one 2-D tensor;
* word2vec text format (any other name, e.g. ``.txt`` or ``.vec``) -- a ``V D`` header line, then V lines
  ``token v1 ... vD`` separated by spaces (Mikolov et al. 2013's ``word2vec`` tool writes it); a file without the
  header line (GloVe's text files) is read too, D taken from its first line. The tokens are the file's own, so
  a vocabulary file is refused.

:func:`write_word2vec` writes the text format (9 significant digits: float32 values read back exactly).
Every bad file is one :class:`~nnfeat.errors.NnfeatError` line naming what was wrong and what would be right.

Example:
    >>> table = read_embedding_file("vectors.txt")
    >>> table.vectors.shape, table.vocab[:3]
    (torch.Size([400, 50]), ['the', ',', '.'])
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from nnfeat.errors import NnfeatError, shorten
from nnfeat.io import atomic_path

#: name endings read as arrays (with a vocabulary file); anything else is read as word2vec text
ARRAY_SUFFIXES = (".npy", ".safetensors")


@dataclass
class EmbeddingTable:
    """A (V, D) embedding matrix and its vocabulary.

    Attributes:
        vectors: (V, D) float32 tensor, row i the vector of ``vocab[i]``.
        vocab: V token strings.
        source: the file as given (``PATH`` or ``PATH:KEY``).
        form: ``"npy"``, ``"safetensors"`` or ``"word2vec"``.
        vocab_file: the vocabulary file read (None for word2vec text).
    """

    vectors: torch.Tensor
    vocab: list[str]
    source: str
    form: str
    vocab_file: str | None = None

    def record(self) -> dict:
        """JSON-ready: the file, its form, the vocabulary file, V and D."""
        return {"file": self.source, "form": self.form, "vocab_file": self.vocab_file,
                "tokens": int(self.vectors.shape[0]), "dim": int(self.vectors.shape[1])}


def split_source(source: str | os.PathLike) -> tuple[Path, str | None]:
    """``PATH`` or ``PATH.safetensors:KEY`` -> (path, key or None). A ``:`` only splits after ``.safetensors``,
    so Windows drive letters and names with colons stay whole."""
    text = str(source)
    mark = text.find(".safetensors:")
    if mark >= 0:
        return Path(text[:mark + len(".safetensors")]), text[mark + len(".safetensors:"):] or None
    return Path(text), None


def read_embedding_file(source: str | os.PathLike, vocab: str | os.PathLike | Sequence[str] | None = None
                        ) -> EmbeddingTable:
    """The embedding matrix of ``source`` (see the module docstring) and its vocabulary.

    Args:
        source: ``VECTORS.npy``, ``WEIGHTS.safetensors[:KEY]`` or a word2vec text file.
        vocab: a vocabulary file (one token a line) or a list of tokens for the array forms; None: ``vocab.txt``
            beside the array file.

    Raises:
        NnfeatError: one line for a missing or unreadable file, a missing vocabulary, a vocabulary whose length
            is not the row count, an array that is not (V, D) with D >= 2, non-finite values, a malformed
            word2vec line.
    """
    path, key = split_source(source)
    shown = shorten(str(source))
    if not path.is_file():
        raise NnfeatError(f"--embedding-file '{shown}' not found; expected VECTORS.npy, WEIGHTS.safetensors[:KEY] "
                          "(each with --vocab FILE) or a word2vec text file")
    suffix = path.suffix.lower()
    if suffix in ARRAY_SUFFIXES:
        matrix = _read_npy(path) if suffix == ".npy" else _read_safetensors(path, key)
        tokens, vocab_file = _read_vocab(path, vocab, len(matrix))
        form = suffix[1:]
    else:
        if vocab is not None:
            raise NnfeatError(f"'{shown}' is word2vec text, which names its own tokens: leave out --vocab (a "
                              "vocabulary file goes with .npy or .safetensors arrays)")
        tokens, matrix = _read_word2vec(path)
        vocab_file, form = None, "word2vec"
    vectors = torch.from_numpy(np.ascontiguousarray(matrix, dtype=np.float32))
    if vectors.dim() != 2 or vectors.shape[0] < 1 or vectors.shape[1] < 2:
        raise NnfeatError(f"--embedding-file '{shown}' holds an array of shape {tuple(vectors.shape)}; expected "
                          "(V, D): one row per token, D >= 2")
    bad = int((~torch.isfinite(vectors)).sum())
    if bad:
        raise NnfeatError(f"--embedding-file '{shown}' has {bad} non-finite values (NaN/inf); expected finite numbers")
    return EmbeddingTable(vectors, tokens, str(source), form, vocab_file)


def write_word2vec(path: str | os.PathLike, vectors: torch.Tensor | np.ndarray, vocab: Sequence[str]) -> Path:
    """Write (V, D) ``vectors`` and their V tokens as word2vec text (``V D`` header), atomically.

    Raises:
        NnfeatError: one line when the counts differ or a token is empty or holds white space (the format
            separates fields by spaces).
    """
    values = vectors.detach().cpu().numpy() if torch.is_tensor(vectors) else np.asarray(vectors)
    values = np.asarray(values, dtype=np.float32)
    if values.ndim != 2 or len(values) != len(vocab):
        raise NnfeatError(f"word2vec text needs (V, D) vectors and V tokens; got {tuple(values.shape)} and "
                          f"{len(vocab)} tokens")
    bad = next((t for t in vocab if not t or any(c.isspace() for c in t)), None)
    if bad is not None:
        raise NnfeatError(f"token {bad!r} is empty or holds white space, which word2vec text cannot store")
    lines = [f"{values.shape[0]} {values.shape[1]}"]
    lines += [token + " " + " ".join(f"{v:.9g}" for v in row) for token, row in zip(vocab, values.tolist())]
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8", newline="\n")
    return path


def read_token_list(spec: str | Sequence[str]) -> tuple[list[str], list[str] | None]:
    """``--tokens``: ``FILE`` (one token a line, or ``token<TAB>group``), ``a,b,c`` or a list -> (tokens,
    groups or None)."""
    if not isinstance(spec, str):
        tokens, groups = [str(t) for t in spec], None
    elif Path(spec).is_file():
        try:
            lines = [line.rstrip("\r") for line in Path(spec).read_text(encoding="utf-8").split("\n")]
        except (OSError, UnicodeDecodeError) as err:
            raise NnfeatError(f"cannot read --tokens '{shorten(spec)}' ({type(err).__name__}); expected a UTF-8 "
                              "file with one token a line (token<TAB>group to colour groups)") from None
        rows = [line.split("\t") for line in lines if line.strip()]
        tokens = [r[0] for r in rows]
        groups = [r[1].strip() if len(r) > 1 else "" for r in rows] if any(len(r) > 1 for r in rows) else None
    else:
        tokens, groups = [t.strip() for t in spec.split(",") if t.strip()], None
    if not tokens:
        raise NnfeatError(f"--tokens '{shorten(str(spec))}' names no tokens: give FILE (one a line) or a,b,c")
    return tokens, groups


# ----------------------------------------------------------------------------------------------------------------
def _read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise NnfeatError(f"cannot read '{shorten(str(path))}' as a .npy array ({type(err).__name__}: "
                          f"{shorten(' '.join(str(err).split()), 100)}); expected a (V, D) float array") from None


def _read_safetensors(path: Path, key: str | None) -> np.ndarray:
    try:
        from safetensors import safe_open  # optional extra (nnfeat[text]): only this form needs it
    except ImportError:
        raise NnfeatError("reading a .safetensors embedding needs the safetensors package: pip install "
                          "'nnfeat[text]'") from None
    shown = shorten(str(path))
    try:
        with safe_open(str(path), framework="pt") as fh:
            keys = list(fh.keys())
            if key is None:
                matrices = [k for k in keys if len(fh.get_slice(k).get_shape()) == 2]
                if len(matrices) != 1:
                    listed = ", ".join(matrices[:5]) + (" ..." if len(matrices) > 5 else "")
                    raise NnfeatError(f"'{shown}' holds {len(matrices)} 2-D tensors ({listed}): name one as "
                                      f"{shown}:KEY")
                key = matrices[0]
            if key not in keys:
                close = [k for k in keys if "embed" in k.lower()][:3]
                hint = f"; tensors with 'embed' in their name: {', '.join(close)}" if close else ""
                raise NnfeatError(f"'{shown}' has no tensor '{shorten(key)}'{hint}")
            return fh.get_tensor(key).float().numpy()
    except NnfeatError:
        raise
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types for a bad file
        raise NnfeatError(f"cannot read '{shown}' as safetensors ({type(err).__name__}: "
                          f"{shorten(' '.join(str(err).split()), 100)})") from None


def _read_vocab(path: Path, vocab, rows: int) -> tuple[list[str], str | None]:
    """The tokens of ``vocab`` (a file or a list; None: ``vocab.txt`` beside ``path``), checked to number ``rows``."""
    if vocab is None:
        beside = path.parent / "vocab.txt"
        if not beside.is_file():
            raise NnfeatError(f"'{shorten(str(path))}' needs its vocabulary: give --vocab FILE (one token a line, "
                              f"line i naming row i; {rows} lines)")
        vocab = beside
    if isinstance(vocab, (str, os.PathLike)):
        shown = shorten(str(vocab))
        try:
            tokens = Path(vocab).read_text(encoding="utf-8").split("\n")
        except FileNotFoundError:
            raise NnfeatError(f"--vocab '{shown}' not found; expected a UTF-8 text file, one token a line") from None
        except (OSError, UnicodeDecodeError) as err:
            raise NnfeatError(f"cannot read --vocab '{shown}' ({type(err).__name__}); expected a UTF-8 text file, "
                              "one token a line") from None
        if tokens and tokens[-1] == "":
            tokens.pop()  # the final line break
        tokens = [t[:-1] if t.endswith("\r") else t for t in tokens]
        name = str(vocab)
    else:
        tokens, name, shown = [str(t) for t in vocab], None, "the vocabulary"
    if len(tokens) != rows:
        raise NnfeatError(f"--vocab '{shown}' has {len(tokens)} tokens but the embedding matrix has {rows} rows: "
                          "give the vocabulary of this matrix (one token a line, line i naming row i)")
    return tokens, name


def _read_word2vec(path: Path) -> tuple[list[str], np.ndarray]:
    shown = shorten(str(path))
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise NnfeatError(f"'{shown}' is not UTF-8 text (byte {err.start}); expected word2vec text ('V D', then "
                          "'token v1 ... vD' lines), or name a .npy / .safetensors array") from None
    except OSError as err:
        raise NnfeatError(f"cannot read '{shown}' ({err.strerror or type(err).__name__})") from None
    lines = [line for line in text.split("\n") if line.strip()]
    if not lines:
        raise NnfeatError(f"'{shown}' is empty; expected word2vec text: a 'V D' line, then 'token v1 ... vD' lines")
    head = lines[0].split()
    header = len(head) == 2 and all(h.isdigit() for h in head)
    body = lines[1:] if header else lines
    dim = int(head[1]) if header else len(head) - 1
    if dim < 2 or not body:
        raise NnfeatError(f"'{shown}' holds no vectors of 2 or more values; expected word2vec text: a 'V D' line, "
                          "then 'token v1 ... vD' lines")
    if header and int(head[0]) != len(body):
        raise NnfeatError(f"'{shown}' says {head[0]} tokens in its header but has {len(body)} vector lines")
    tokens, values = [], []
    for number, line in enumerate(body, start=2 if header else 1):  # reading a file: one line per token
        fields = line.rstrip().split(" ")
        if len(fields) != dim + 1:
            raise NnfeatError(f"line {number} of '{shown}' has {len(fields) - 1} values, expected {dim} "
                              "('token v1 ... vD', separated by single spaces)")
        tokens.append(fields[0])
        values.extend(fields[1:])
    try:
        matrix = np.asarray(values, dtype=np.float32).reshape(len(tokens), dim)
    except ValueError:
        bad = next(i for i, v in enumerate(values) if not _is_number(v))
        raise NnfeatError(f"line {bad // dim + (2 if header else 1)} of '{shown}' has a value that is not a "
                          f"number: {shorten(values[bad], 30)!r}") from None
    return tokens, matrix


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


__all__ = ["ARRAY_SUFFIXES", "EmbeddingTable", "read_embedding_file", "read_token_list", "split_source",
           "write_word2vec"]
