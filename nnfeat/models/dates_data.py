"""Written dates and their ISO form, for ``dates-seq2seq``: a seeded generator that knows which characters of the
source produced each output field.

A :class:`DateExample` is ``source`` ("Thursday, 25 June 2009"), ``target`` ("2009-06-25") and ``spans``: field
(``"year"``, ``"month"``, ``"day"``) -> the half-open character span of ``source`` written for it (``(18, 22)``
for the year above). A day's span covers its digits and ordinal suffix ("25th"), a month's its name or digits.

Dates run from 1950-01-01 to 2049-12-31. **Two-digit years** ("25.06.09") follow one rule: 00-49 mean
2000-2049 and 50-99 mean 1950-1999, so every two-digit year names exactly one date of that range.

Formats never clash: "/" with the year last is month/day/year (US: "6/25/2009"), "." is day.month.year
("25.06.09"), a year first is year/month/day ("2009/06/25", "2009-06-25"); a weekday, when written, is the right
one. Words come in lower case, Title Case or UPPER CASE (the source tokenizer lower-cases them).

**Held out**: a date is held out when the CRC-32 of its ISO form is divisible by 10 (about 3,650 of the 36,524
dates). ``make_examples(n, seed, "train")`` draws only the other dates, ``"heldout"`` only those, so no held-out
date is seen in training, in any written form.

Alignment: :func:`field_positions` maps each decoder query position (the position whose prediction is a target
character, after the decoder's bos shift) to its field and its source *token* span, given the tokenizers' wraps.
"""

from __future__ import annotations

import datetime
import random
import re
import zlib
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from nnfeat.errors import NnfeatError
from nnfeat.models.tokenizers import Tokenizer

FIRST_DATE = datetime.date(1950, 1, 1)
LAST_DATE = datetime.date(2049, 12, 31)
FIELDS = ("year", "month", "day")
#: target character index -> field ("YYYY-MM-DD"; the dashes belong to no field)
TARGET_FIELDS = ("year",) * 4 + (None,) + ("month",) * 2 + (None,) + ("day",) * 2
MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
          "november", "december")
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
SPLITS = ("train", "heldout")
_WORD_START = re.compile(r"\b[a-z]")


@dataclass(frozen=True)
class DateExample:
    """One written date: ``source`` text, ISO ``target``, and ``spans`` field -> (start, end) characters of source."""

    source: str
    target: str
    spans: dict[str, tuple[int, int]]


def two_digit_year(yy: int) -> int:
    """The century rule: 0-49 -> 2000-2049, 50-99 -> 1950-1999."""
    return 2000 + yy if yy < 50 else 1900 + yy


def _ordinal(date: datetime.date) -> str:
    day = date.day
    suffix = "th" if 10 <= day % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


#: how each piece of a format is written, and the field it belongs to (None: no output field)
PIECES: dict[str, tuple[str | None, Callable[[datetime.date], str]]] = {
    "Y": ("year", lambda d: f"{d.year:04d}"),
    "y": ("year", lambda d: f"{d.year % 100:02d}"),
    "B": ("month", lambda d: MONTHS[d.month - 1]),
    "b": ("month", lambda d: MONTHS[d.month - 1][:3]),
    "m": ("month", lambda d: str(d.month)),
    "mm": ("month", lambda d: f"{d.month:02d}"),
    "d": ("day", lambda d: str(d.day)),
    "dd": ("day", lambda d: f"{d.day:02d}"),
    "do": ("day", _ordinal),
    "A": (None, lambda d: WEEKDAYS[d.weekday()]),
    "a": (None, lambda d: WEEKDAYS[d.weekday()][:3]),
}

#: the formats: pieces in braces, everything else literal
FORMATS = (
    "{do} of {B}, {Y}", "the {do} of {B} {Y}", "{B} {d} {Y}", "{B} {d}, {Y}", "{b} {do}, {Y}", "{b}. {d}, {Y}",
    "{d} {B} {Y}", "{d} {b} {Y}", "{do} {B} {Y}", "{A}, {d} {B} {Y}", "{A}, {B} {do}, {Y}", "{a} {b} {dd} {Y}",
    "{a}, {d} {b} {Y}", "{dd}.{mm}.{y}", "{d}.{m}.{Y}", "{dd}.{mm}.{Y}", "{Y}/{mm}/{dd}", "{Y}-{mm}-{dd}",
    "{Y}.{mm}.{dd}", "{m}/{d}/{Y}", "{mm}/{dd}/{Y}", "{m}/{d}/{y}", "{d} {B} '{y}", "{b} {d} '{y}",
)


def _render(fmt: str, date: datetime.date, case: str) -> DateExample:
    """Write ``date`` in format ``fmt`` with words in ``case`` ("lower" | "title" | "upper")."""
    text, spans, rest = "", {}, fmt
    while rest:
        open_at = rest.find("{")
        if open_at < 0:
            text, rest = text + rest, ""
            break
        close_at = rest.index("}", open_at)
        text += rest[:open_at]
        field, write = PIECES[rest[open_at + 1:close_at]]
        piece = write(date)
        if field is not None:
            spans[field] = (len(text), len(text) + len(piece))
        text, rest = text + piece, rest[close_at + 1:]
    if case == "upper":
        text = text.upper()
    elif case == "title":
        text = _WORD_START.sub(lambda m: m.group(0).upper(), text)
    return DateExample(text, date.isoformat(), spans)


def is_heldout(date: datetime.date) -> bool:
    """Whether ``date`` belongs to the held-out split (CRC-32 of its ISO form divisible by 10)."""
    return zlib.crc32(date.isoformat().encode("ascii")) % 10 == 0


def split_dates(split: str) -> list[datetime.date]:
    """Every date of ``split`` ("train" | "heldout") between :data:`FIRST_DATE` and :data:`LAST_DATE`, in order."""
    if split not in SPLITS:
        raise NnfeatError(f"unknown dates split '{split}'; expected train or heldout")
    first, days = FIRST_DATE.toordinal(), (LAST_DATE - FIRST_DATE).days + 1
    dates = (datetime.date.fromordinal(first + i) for i in range(days))
    return [d for d in dates if is_heldout(d) == (split == "heldout")]


def make_examples(n: int, seed: int = 0, split: str = "train") -> list[DateExample]:
    """``n`` written dates of ``split``, each a uniformly drawn date, format and letter case; the same ``seed``
    gives the same list (a private ``random.Random(seed)``, never the global generator)."""
    rng = random.Random(f"dates-{split}-{seed}")
    pool = split_dates(split)
    return [_render(rng.choice(FORMATS), rng.choice(pool), rng.choice(("lower", "lower", "title", "upper")))
            for _ in range(n)]


def field_positions(example: DateExample, source_tokenizer: Tokenizer,
                    target_tokenizer: Tokenizer) -> list[tuple[int, str, tuple[int, int]]]:
    """Where each output field's characters are predicted, and which source tokens wrote that field.

    Returns one ``(query, field, (start, end))`` per target character of a field (8 for "YYYY-MM-DD"):
    ``query`` is the decoder input position whose prediction is that character (the decoder input is the
    encoded target without its last token, so with a leading bos character c is predicted at position c);
    ``(start, end)`` the half-open span of source token positions, i.e. the character span shifted by the
    source tokenizer's leading special token, if it wraps one.
    """
    src_shift = 1 if source_tokenizer.wrap[0] else 0
    tgt_shift = 1 if target_tokenizer.wrap[0] else 0
    out = []
    for char, field in enumerate(TARGET_FIELDS):
        if field is None:
            continue
        start, end = example.spans[field]
        out.append((char + tgt_shift - 1, field, (start + src_shift, end + src_shift)))
    return out


def field_span_table(examples: Sequence[DateExample], source_tokenizer: Tokenizer,
                     target_tokenizer: Tokenizer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`field_positions` for many examples as tensors: queries (8,) long (the same for every example),
    field index (8,) long into :data:`FIELDS`, and starts, ends (N, 8) long source token positions."""
    rows = [field_positions(e, source_tokenizer, target_tokenizer) for e in examples]
    queries = torch.tensor([q for q, _, _ in rows[0]])
    fields = torch.tensor([FIELDS.index(f) for _, f, _ in rows[0]])
    starts = torch.tensor([[s for _, _, (s, _) in r] for r in rows])
    ends = torch.tensor([[e for _, _, (_, e) in r] for r in rows])
    return queries, fields, starts, ends


__all__ = ["DateExample", "FIELDS", "FORMATS", "MONTHS", "SPLITS", "TARGET_FIELDS", "WEEKDAYS", "field_positions",
           "field_span_table", "is_heldout", "make_examples", "split_dates", "two_digit_year"]
