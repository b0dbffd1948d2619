"""The cells of an activation atlas: the one schema shared by ``cells.json`` and the atlas viewer.

An activation atlas (Carter et al., "Activation Atlas", Distill 2019) lays the sampled activation vectors
out in 2-D, bins the layout into a ``grid`` x ``grid`` grid and renders one icon per cell that holds
enough samples. ``cells.json`` lists those cells, one entry each; :func:`cell_entry` builds an entry (the
pipeline, :func:`nnfeat.ops.atlas.cell_entries`) and :func:`normalize_cell` checks one and brings it
to the complete form every reader can rely on (the viewer, :func:`nnfeat.views.write_atlas_html`):
every field present, missing optional ones as their default, numbers as plain ints and finite floats
(``None`` for NaN, which JSON cannot hold).

:data:`CELL_FIELDS` is the schema: each field's name, JSON type, whether it is required and what it holds.
Only ``row`` and ``col`` are required, so hand-made cells for the viewer can be small. The fields, in
``cells.json`` order:
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from nnfeat.errors import NnfeatError

__all__ = ["CellField", "CELL_FIELDS", "REQUIRED_FIELDS", "cell_entry", "normalize_cell", "normalize_cells"]


@dataclass(frozen=True)
class CellField:
    """One field of a cell entry: its key, JSON type, whether every entry must have it, and its meaning.

    An optional field that is absent reads as ``null``, unless its ``doc`` says otherwise.
    """

    name: str
    type: str
    required: bool
    doc: str


#: The cell schema, in the order :func:`cell_entry` writes the fields.
CELL_FIELDS: tuple[CellField, ...] = (
    CellField("row", "int", True, "grid row in [0, grid), row 0 at the top of the mosaic"),
    CellField("col", "int", True, "grid column in [0, grid), column 0 at the left"),
    CellField("count", "int", False, "number of samples whose layout position fell in the cell (absent: 0)"),
    CellField("icon", "str | null", False, "the cell's rendered icon: a path relative to the atlas folder"),
    CellField("position", "[float, float] | null", False, "mean normalized layout position (x, y) of the samples"),
    CellField("cosine", "float | null", False,
              "cosine similarity of the rendered icon's centre activation and the cell's mean activation"),
    CellField("members", "list[int]", False,
              "dataset indices of the member images closest to the cell's mean activation, closest first "
              "(absent: [])"),
    CellField("top_class", "{index: int, name: str} | null", False,
              "the class with the largest mean attribution (when the model has class logits)"),
    CellField("attribution", "list[float] | null", False,
              "mean attribution to each class, one float per class (omitted for models with many classes)"),
    CellField("labels", "{label name: int} | null", False,
              "how many of the cell's samples carry each dataset label, most frequent first"),
    CellField("majority_label", "{index: int, name: str, share: float} | null", False,
              "the most frequent dataset label and its share of the cell's samples"),
)

#: The fields every entry must have.
REQUIRED_FIELDS: tuple[str, ...] = tuple(f.name for f in CELL_FIELDS if f.required)

__doc__ += "\n".join(
    f"* ``{f.name}`` ({f.type}{', required' if f.required else ''}): {f.doc}." for f in CELL_FIELDS
) + "\n"


def cell_entry(
    row: int,
    col: int,
    *,
    count: int,
    icon: str | None,
    position: Sequence[float] | None,
    cosine: float | None,
    members: Iterable[int],
    top_class: tuple[int, str] | None = None,
    attribution: Sequence[float] | None = None,
    labels: Mapping[str, int] | None = None,
    majority_label: tuple[int, str, float] | None = None,
    digits: int = 5,
) -> dict[str, Any]:
    """One ``cells.json`` entry; floats rounded to ``digits`` decimals, optional fields left out when None.

    ``top_class`` is (class index, name); ``majority_label`` is (label index, name, share of the cell).
    """
    entry: dict[str, Any] = {
        "row": int(row), "col": int(col), "count": int(count),
        "icon": None if icon is None else str(icon),
        "position": None if position is None else [round(float(v), digits) for v in position],
        "cosine": None if cosine is None else round(float(cosine), digits),
        "members": [int(m) for m in members],
    }
    if top_class is not None:
        entry["top_class"] = {"index": int(top_class[0]), "name": str(top_class[1])}
    if attribution is not None:
        entry["attribution"] = [round(float(v), digits) for v in attribution]
    if labels is not None:
        entry["labels"] = {str(k): int(v) for k, v in labels.items()}
    if majority_label is not None:
        index, name, share = majority_label
        entry["majority_label"] = {"index": int(index), "name": str(name), "share": round(float(share), digits)}
    return entry


# ----------------------------------------------------------------------------------------------------------------
# checking


def normalize_cells(cells: Sequence[Mapping[str, Any]], grid: int) -> list[dict[str, Any]]:
    """:func:`normalize_cell` of every cell, and a one-line error when two cells share a (row, col)."""
    records = [normalize_cell(cell, grid, index=i) for i, cell in enumerate(cells)]
    seen: dict[tuple[int, int], int] = {}
    for i, record in enumerate(records):
        key = (record["row"], record["col"])
        if key in seen:
            raise NnfeatError(f"cells[{seen[key]}] and cells[{i}] are both at row {key[0]}, col {key[1]}; one entry per cell")
        seen[key] = i
    return records


def normalize_cell(cell: Mapping[str, Any], grid: int, *, index: int = 0) -> dict[str, Any]:
    """Check one cell entry against :data:`CELL_FIELDS` and return it complete, in plain JSON types.

    Every field is present (missing optional ones as their default), ``row``/``col`` are checked against
    the ``grid``, NaN floats become None. ``index`` (the cell's place in its list) is only used in the
    error messages, which are one line each (:class:`~nnfeat.errors.NnfeatError`). Unknown keys are dropped.
    """
    at = f"cells[{index}]"
    if not isinstance(cell, Mapping):
        raise NnfeatError(f"{at} must be a dict with 'row' and 'col', got {type(cell).__name__}")
    for key in REQUIRED_FIELDS:
        if key not in cell:
            raise NnfeatError(f"{at} has no '{key}' key; every cell needs 'row' and 'col' in 0..{grid - 1}")
    row, col = _as_int(cell["row"], f"{at}['row']"), _as_int(cell["col"], f"{at}['col']")
    for key, value in (("row", row), ("col", col)):
        if not 0 <= value < grid:
            raise NnfeatError(f"{at}['{key}'] = {value} is outside the {grid}x{grid} grid (expected 0..{grid - 1})")

    top = cell.get("top_class")
    if top is not None:
        if not isinstance(top, Mapping) or "index" not in top:
            raise NnfeatError(f"{at}['top_class'] must be {{'index': i, 'name': s}} or None, got {top!r}")
        number = _as_int(top["index"], f"{at}['top_class']['index']")
        top = {"index": number, "name": str(top.get("name", f"class {number}"))}

    labels = cell.get("labels")
    if labels is not None:
        if not isinstance(labels, Mapping):
            raise NnfeatError(f"{at}['labels'] must be {{label_name: count}} or None, got {type(labels).__name__}")
        labels = {str(k): _as_int(v, f"{at}['labels'][{k!r}]") for k, v in labels.items()}

    majority = cell.get("majority_label")
    if majority is not None:
        if not isinstance(majority, Mapping) or "index" not in majority:
            raise NnfeatError(f"{at}['majority_label'] must be {{'index': i, 'name': s, 'share': x}} or None, "
                              f"got {majority!r}")
        number = _as_int(majority["index"], f"{at}['majority_label']['index']")
        majority = {"index": number, "name": str(majority.get("name", f"label {number}")),
                    "share": _as_float(majority.get("share"), f"{at}['majority_label']['share']")}

    position = cell.get("position")
    if position is not None:
        position = [_as_float(v, f"{at}['position']") for v in _numbers(position, float, f"{at}['position']")[:2]]

    attribution = cell.get("attribution")
    if attribution is not None:
        values = _numbers(attribution, float, f"{at}['attribution']")
        attribution = [_as_float(v, f"{at}['attribution']") or 0.0 for v in values]

    icon = cell.get("icon")
    return {
        "row": row,
        "col": col,
        "count": _as_int(cell.get("count", 0) or 0, f"{at}['count']"),
        "icon": None if icon is None else str(icon),
        "position": position,
        "top_class": top,
        "labels": labels,
        "majority_label": majority,
        "cosine": _as_float(cell.get("cosine"), f"{at}['cosine']"),
        "members": [int(m) for m in _numbers(cell.get("members") or [], np.int64, f"{at}['members']")],
        "attribution": attribution,
    }


def _as_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            return int(value)
        raise NnfeatError(f"{what} must be an integer, got {value!r}")
    return int(value)


def _as_float(value: Any, what: str) -> float | None:
    """A finite float, or None for missing / NaN (JSON has no NaN)."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise NnfeatError(f"{what} must be a number, got {value!r}") from None
    return number if math.isfinite(number) else None


def _numbers(values: Any, dtype: Any, what: str) -> np.ndarray:
    """A flat numeric array from a list/array/tensor, or a one-line NnfeatError."""
    if hasattr(values, "detach"):  # a torch tensor
        values = values.detach().cpu().numpy()
    try:
        return np.asarray(values, dtype=dtype).ravel()
    except (TypeError, ValueError):
        raise NnfeatError(f"{what} must be a list of numbers, got {values!r}") from None
