"""Tokenizers: text -> token ids, and ids -> tokens as the tokenizer spells them.

One small adapter (:class:`Tokenizer`) covers every token model nnfeat reads:

* :class:`CharTokenizer` -- one token per character of a fixed alphabet (nnfeat's embedded text models);
* :class:`WordTokenizer` -- a vocabulary (a list, or a file with one token a line) and text split into words and
  punctuation marks; a word not in the vocabulary becomes its unknown token (or a one-line error without one);
* :class:`CallableTokenizer` -- any callable ``text -> list[int]`` a user brings, spelled through an optional
  vocabulary (else ``#ID``);
* a Hugging Face tokenizer (``nnfeat.models.hf``), when the ``text`` extra is installed.

Special tokens are named by role (``pad``, ``bos``, ``eos``, ``unk``, ``mask``, ``cls``, ``sep``) in
:attr:`Tokenizer.specials`; :meth:`Tokenizer.encode` adds the ones the model was trained with around a text.

Example:
    >>> tok = CharTokenizer("abc", specials=("pad", "bos", "eos"))
    >>> tok.encode("cab")
    [1, 5, 3, 4, 2]
    >>> tok.spell(tok.encode("cab"))
    ['<bos>', 'c', 'a', 'b', '<eos>']
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable, Sequence

from nnfeat.errors import NnfeatError, shorten

#: the roles a special token may have, in the order CharTokenizer numbers them (pad is always id 0 there)
SPECIAL_ROLES = ("pad", "bos", "eos", "unk", "mask", "cls", "sep")
_WORDS = re.compile(r"\w+|[^\w\s]", re.UNICODE)


class Tokenizer:
    """Text -> ids and back. Subclasses set :attr:`vocab` (id -> token text), :attr:`specials` (role -> id) and
    implement :meth:`_ids` (the ids of a text's own tokens, without special tokens).

    Attributes:
        vocab: the token of each id, as the tokenizer spells it (``None`` where unknown: a user's callable
            without a vocabulary).
        specials: role (``pad``, ``bos``, ``eos``, ``unk``, ``mask``, ``cls``, ``sep``) -> id.
        wrap: the roles put before and after every text by :meth:`encode` (e.g. ``("bos", "eos")`` or
            ``("cls", "sep")``).
        description: one line for the input spec (``"characters of 40 (dates-seq2seq)"``).
    """

    vocab: list[str] | None = None
    specials: dict[str, int]
    wrap: tuple[str | None, str | None] = (None, None)
    description: str = "a tokenizer"

    # -- what a subclass provides ------------------------------------------------------------------------
    def _ids(self, text: str) -> list[int]:
        raise NotImplementedError

    # -- the adapter ----------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int | None:
        return None if self.vocab is None else len(self.vocab)

    def id_of(self, role: str) -> int | None:
        """The id of the special token with ``role`` (``"pad"``, ...), or None when it has none."""
        return self.specials.get(role)

    def encode(self, text: str) -> list[int]:
        """``text`` -> its ids, wrapped in the special tokens of :attr:`wrap`.

        Raises:
            NnfeatError: one line for text that is not a string or holds a token the vocabulary lacks.
        """
        if not isinstance(text, str):
            raise NnfeatError(f"a text must be a string; got {type(text).__name__}")
        before, after = (self.specials[r] if r else None for r in self.wrap)
        return [i for i in (before,) if i is not None] + self._ids(text) + [i for i in (after,) if i is not None]

    def spell(self, ids: Sequence[int]) -> list[str]:
        """Each id as the tokenizer spells it (``'<bos>'``, ``'c'``, ``'##ing'``), or ``#ID`` without a vocabulary."""
        vocab = self.vocab
        return [vocab[i] if vocab is not None and 0 <= i < len(vocab) else f"#{i}" for i in (int(i) for i in ids)]

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids`` without special tokens (tokens joined as :meth:`join` says)."""
        special = set(self.specials.values())
        return self.join([t for i, t in zip(ids, self.spell(ids)) if int(i) not in special])

    def join(self, tokens: Sequence[str]) -> str:
        """Tokens back to text: concatenated (characters) by default."""
        return "".join(tokens)

    def record(self) -> dict:
        """JSON-ready: kind, vocabulary size, special tokens by role, the wrap."""
        return {"kind": type(self).__name__, "description": self.description, "vocab_size": self.vocab_size,
                "specials": {role: {"id": i, "token": self.spell([i])[0]} for role, i in self.specials.items()},
                "wrap": list(self.wrap)}


class CharTokenizer(Tokenizer):
    """One token per character of ``alphabet``; specials first, spelled ``<role>`` (``pad`` is id 0).

    Args:
        alphabet: the characters, in id order after the specials.
        specials: roles of the special tokens, from :data:`SPECIAL_ROLES`.
        wrap: the roles put around every text by :meth:`encode` (default bos and eos when present).
        lower: lower-case text before looking it up.
    """

    def __init__(self, alphabet: str, specials: Sequence[str] = ("pad", "bos", "eos", "unk"), *,
                 wrap: tuple[str | None, str | None] | None = None, lower: bool = False,
                 description: str | None = None) -> None:
        unknown = [r for r in specials if r not in SPECIAL_ROLES]
        if unknown or len(set(alphabet)) != len(alphabet):
            raise ValueError(f"bad CharTokenizer: roles {unknown} / repeated characters in {alphabet!r}")
        self.vocab = [f"<{r}>" for r in specials] + list(alphabet)
        self.specials = {r: i for i, r in enumerate(specials)}
        self._index = {c: i + len(specials) for i, c in enumerate(alphabet)}
        self.lower = lower
        self.wrap = wrap if wrap is not None else ("bos" if "bos" in self.specials else None,
                                                   "eos" if "eos" in self.specials else None)
        self.description = description or f"characters of an alphabet of {len(alphabet)}"

    def _ids(self, text: str) -> list[int]:
        text = text.lower() if self.lower else text
        unk = self.specials.get("unk")
        ids = [self._index.get(c, unk) for c in text]
        if None in ids:
            bad = next(c for c, i in zip(text, ids) if i is None)
            raise NnfeatError(f"character {bad!r} of text '{shorten(text)}' is not in the model's alphabet "
                              f"({''.join(self._index)!r})")
        return ids  # type: ignore[return-value]


class WordTokenizer(Tokenizer):
    """Words and punctuation marks (``\\w+|[^\\w\\s]``) looked up in a vocabulary.

    Args:
        vocab: the tokens in id order, or the path of a text file with one token a line.
        specials: role -> token text for the special tokens in the vocabulary (e.g. ``{"pad": "[PAD]"}``);
            found by name when not given (``[PAD]``/``<pad>``, ``[UNK]``/``<unk>``, ...).
        wrap: roles put around every text.
        lower: lower-case text before looking it up.
    """

    def __init__(self, vocab: Sequence[str] | str | os.PathLike, specials: dict[str, str] | None = None, *,
                 wrap: tuple[str | None, str | None] = (None, None), lower: bool = False) -> None:
        if isinstance(vocab, (str, os.PathLike)):
            path = Path(vocab)
            try:
                tokens = path.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as err:
                raise NnfeatError(f"cannot read vocabulary file '{shorten(str(vocab))}' ({type(err).__name__}); "
                                  "expected a UTF-8 text file with one token a line") from None
            source = path.name
        else:
            tokens, source = list(vocab), "a list"
        if not tokens:
            raise NnfeatError(f"the vocabulary ({source}) is empty: one token a line")
        self.vocab = tokens
        self._index = {t: i for i, t in enumerate(tokens)}
        named = specials or {r: t for r in SPECIAL_ROLES for t in (f"[{r.upper()}]", f"<{r}>") if t in self._index}
        missing = [t for t in named.values() if t not in self._index]
        if missing:
            raise NnfeatError(f"special token {missing[0]!r} is not in the vocabulary ({source})")
        self.specials = {r: self._index[t] for r, t in named.items()}
        self.wrap, self.lower = wrap, lower
        self.description = f"words of a vocabulary of {len(tokens)} ({source})"

    def _ids(self, text: str) -> list[int]:
        words = _WORDS.findall(text.lower() if self.lower else text)
        unk = self.specials.get("unk")
        ids = [self._index.get(w, unk) for w in words]
        if None in ids:
            bad = next(w for w, i in zip(words, ids) if i is None)
            raise NnfeatError(f"word {bad!r} of text '{shorten(text)}' is not in the vocabulary, which has no "
                              "unknown token")
        return ids  # type: ignore[return-value]

    def join(self, tokens: Sequence[str]) -> str:
        return " ".join(tokens)


class CallableTokenizer(Tokenizer):
    """Any callable ``text -> list[int]`` (a user's own), spelled through ``vocab`` when given.

    Args:
        encode: the callable; its ids are used as they are (it adds its own special tokens, if any).
        vocab: id -> token text, for spelling; without it tokens are spelled ``#ID``.
        specials: role -> id (``pad`` is needed to batch texts of different lengths).
    """

    def __init__(self, encode: Callable[[str], Sequence[int]], vocab: Sequence[str] | None = None,
                 specials: dict[str, int] | None = None) -> None:
        self._encode = encode
        self.vocab = list(vocab) if vocab is not None else None
        self.specials = dict(specials or {})
        self.description = f"{getattr(encode, '__name__', type(encode).__name__)} (the model file's own)"

    def _ids(self, text: str) -> list[int]:
        try:
            ids = [int(i) for i in self._encode(text)]
        except Exception as err:  # noqa: BLE001 - the user's tokenizer is user code
            raise NnfeatError(f"the model's tokenizer failed on text '{shorten(text)}': {type(err).__name__}: "
                              f"{' '.join(str(err).split())[:160]}") from None
        if self.vocab is not None and any(not 0 <= i < len(self.vocab) for i in ids):
            bad = next(i for i in ids if not 0 <= i < len(self.vocab))
            raise NnfeatError(f"the model's tokenizer gave id {bad} for text '{shorten(text)}', outside its "
                              f"vocabulary of {len(self.vocab)}")
        return ids


__all__ = ["SPECIAL_ROLES", "CallableTokenizer", "CharTokenizer", "Tokenizer", "WordTokenizer"]
