"""Text sources: ``--text "..."`` (repeatable), ``--text-file FILE`` (one example a line), ``--n`` and ``--seed``.

:func:`load_texts` gives a :class:`TextSet`: the texts, where they came from and their line numbers, sampled the
way image sources are (fewer than the source: a seeded sample, kept in source order).

Example:
    >>> texts = load_texts(["june 25 2009", "25.06.09"])
    >>> texts.texts, texts.source
    (['june 25 2009', '25.06.09'], 'text')
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from nnfeat.errors import NnfeatError, shorten

#: the most texts one source may hold, and the most characters of one text
MAX_TEXTS, MAX_CHARS = 10_000_000, 1_000_000


@dataclass(frozen=True)
class TextSet:
    """Texts to run a token model on.

    Attributes:
        texts: the texts, in source order.
        source: ``"text"`` (given on the command line or in Python) or the file's path.
        indices: each text's index in the source (its line among the non-blank lines of a file).
    """

    texts: list[str]
    source: str
    indices: list[int]

    def __len__(self) -> int:
        return len(self.texts)

    def command_options(self) -> dict:
        """The options that give this set again (``text`` / ``text_file``, ``n``)."""
        if self.source == "text":
            return {"text": list(self.texts)}
        return {"text_file": self.source, "n": len(self.texts)}


def load_texts(texts: Sequence[str] | None = None, file: str | os.PathLike | None = None, *, n: int | None = None,
               seed: int = 0) -> TextSet:
    """The texts of ``texts`` or of ``file`` (one a line; blank lines skipped), ``n`` of them drawn from ``seed``
    when fewer than the source holds.

    Raises:
        NnfeatError: one line for neither or both sources, an empty text, a file that is missing, not UTF-8 or
            holds no text, or an ``n`` out of range.
    """
    if (texts is None) == (file is None):
        raise NnfeatError("give the texts with --text \"...\" (repeatable) or --text-file FILE (one text a line), "
                          "not both" if texts is not None else "no texts: give --text \"...\" or --text-file FILE")
    if texts is not None:
        texts = [str(t) for t in texts]
        empty = next((i for i, t in enumerate(texts) if not t.strip()), None)
        if empty is not None:
            raise NnfeatError(f"--text number {empty + 1} is empty: give each text at least one word")
        found = TextSet(texts, "text", list(range(len(texts))))
    else:
        found = _read_file(Path(file))
    return _sample(found, n, seed)


def _read_file(path: Path) -> TextSet:
    shown = shorten(str(path))
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise NnfeatError(f"--text-file '{shown}' not found; expected a UTF-8 text file, one text a line") from None
    except IsADirectoryError:
        raise NnfeatError(f"--text-file '{shown}' is a folder; expected a UTF-8 text file, one text a line") from None
    except OSError as err:
        raise NnfeatError(f"cannot read --text-file '{shown}' ({err.strerror or type(err).__name__})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise NnfeatError(f"--text-file '{shown}' is not UTF-8 (line {line}, byte {err.start}); save it as UTF-8")\
            from None
    lines = [line.strip() for line in text.splitlines()]
    kept = [(i, line) for i, line in enumerate(lines) if line]
    if not kept:
        raise NnfeatError(f"--text-file '{shown}' holds no text: one text a line")
    if len(kept) > MAX_TEXTS or max(len(line) for _, line in kept) > MAX_CHARS:
        raise NnfeatError(f"--text-file '{shown}' is too large: at most {MAX_TEXTS:,} lines of {MAX_CHARS:,} "
                          "characters")
    return TextSet([line for _, line in kept], str(path), [i for i, _ in kept])


def _sample(found: TextSet, n: int | None, seed: int) -> TextSet:
    if n is None or n == len(found):
        return found
    if n < 1 or n > len(found):
        raise NnfeatError(f"--n {n} is out of range for {len(found)} texts: give 1..{len(found)}")
    g = torch.Generator().manual_seed(int(seed))
    keep = sorted(torch.randperm(len(found), generator=g)[:n].tolist())
    return TextSet([found.texts[i] for i in keep], found.source, [found.indices[i] for i in keep])


__all__ = ["TextSet", "load_texts"]
