"""What a saliency map explains: the target grammar, and a model's output reduced to one score per image (tensors
in, tensors out).

A network's output is not always one logit vector: a segmentation model returns ``{'out': (B, K, H, W)}``, a
regression head a (B,) or (B, 1) value, a multi-output model a tuple. One text says which number to explain::

    TARGET := [PART ":"] WHAT ["@" REGION]
    PART   := a key of a dict output (``out``), or INT: an element of a tuple / list output (``0``)
    WHAT   := INT (a class index) | NAME (a class name, looked up by the caller) | "pred" | "value"
    REGION := "mask" | Y0 ":" Y1 "," X0 ":" X1      (output pixels: rows Y0..Y1-1, columns X0..X1-1)

=============================  ====================================================================================
``3``, ``cat``, ``pred``        class 3 / ``cat`` / the predicted class of a (B, K) logit output (today's meaning)
``out:3``                       class 3 of the dict output's ``out``: its logit, or for a (B, K, H, W) map its sum
                                over every pixel
``0:3``                         class 3 of element 0 of a tuple / list output
``out:3@mask``                  class 3 of the map ``out``, summed over its predicted mask (the pixels whose argmax
                                is 3)
``out:3@8:24,16:40``            class 3 of the map ``out``, summed over rows 8..23, columns 16..39
``out:pred@mask``               per image the class that wins the most pixels, over its mask
``value``, ``head:value``       a regression output, (B,) or (B, 1)
=============================  ====================================================================================

Without a PART, a dict output is an error that names its keys; a tuple / list output means element 0.
Predicted classes and masks are found once, from each unperturbed image's output (:func:`resolve_target`), and stay
fixed for every noisy, path, occluded or deleted copy of it: every method and the deletion / insertion numbers
explain the same pixels of the same class. :func:`target_scores` is what the gradient is taken of;
:func:`target_probabilities` is what deletion / insertion track (softmax probability of the class, averaged over
the region for a map; the value itself for a regression output).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Sequence

import torch

from nnfeat.errors import NnfeatError

EXAMPLES = "3, cat, pred, out:3, out:3@mask, out:3@8:24,16:40, out:pred@mask, value"
#: the largest class index or box coordinate a target may name
MAX_INDEX = 1_000_000
_PART = re.compile(r"^[\w.\-]+$")
_INDEX = re.compile(r"^\d{1,7}$")
_BOX = re.compile(r"^(\d{1,7}):(\d{1,7}),(\d{1,7}):(\d{1,7})$")


@dataclass(frozen=True, eq=False)
class Target:
    """A parsed target and, once resolved for a batch, its per-image classes and region weights.

    Attributes:
        part: the dict key or tuple / list element of the output to explain, or None: the output itself.
        cls: a class index, a class name (the caller looks names up), or None: the predicted class.
        value: a regression output: the output itself is the score.
        region: ``"mask"`` (the pixels whose argmax is the class), a box (y0, y1, x0, x1), or None (every pixel).
        text: the text it was parsed from.
        classes: (B,) long class per image once resolved (-1 for a value target), else None.
        weights: (B, h, w) float region weights on a map output once resolved, else None.
    """

    part: str | None = None
    cls: int | str | None = None
    value: bool = False
    region: str | tuple[int, int, int, int] | None = None
    text: str = ""
    classes: torch.Tensor | None = None
    weights: torch.Tensor | None = None

    def __str__(self) -> str:
        return self.text or format_target(self)

    @property
    def plain(self) -> bool:
        """A class of the output itself, no region: today's class-logit target."""
        return self.part is None and self.region is None and not self.value

    @property
    def resolved(self) -> bool:
        return self.classes is not None

    def __len__(self) -> int:
        return 0 if self.classes is None else len(self.classes)

    def __bool__(self) -> bool:  # a Target is always a target, resolved or not
        return True

    def __getitem__(self, index) -> "Target":
        """The resolved target of some images (a slice or an index tensor, as on a (B,) tensor)."""
        return replace(self, classes=self.classes[index],
                       weights=None if self.weights is None else self.weights[index])

    def repeat(self, n: int) -> "Target":
        """The resolved target of ``n`` copies of the batch, copy-major (as ``Tensor.repeat`` on (B,))."""
        return replace(self, classes=self.classes.repeat(n),
                       weights=None if self.weights is None else self.weights.repeat(n, 1, 1))

    def to(self, device) -> "Target":
        return replace(self, classes=None if self.classes is None else self.classes.to(device).long(),
                       weights=None if self.weights is None else self.weights.to(device))

    def tolist(self) -> list[int | None]:
        """Per image the explained class (None for a value target)."""
        return [None if self.value else int(c) for c in self.classes.tolist()]


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def parse_target(text: str) -> Target:
    """Parse ``text`` (see the module docstring) into an unresolved :class:`Target`.

    Raises:
        NnfeatError: one line naming the bad piece and the grammar, e.g. ``bad region 'maks'``.
    """
    if not isinstance(text, str):
        raise NnfeatError(f"a target must be text such as {EXAMPLES}; got {type(text).__name__}")
    source = text.strip()
    head, at, where = source.partition("@")
    part, colon, what = head.rpartition(":")
    expect = f"expected [PART:]CLASS|pred|value[@mask|@Y0:Y1,X0:X1], e.g. {EXAMPLES}"
    if not what or (colon and not _PART.match(part)):
        raise NnfeatError(f"bad target '{_short(source)}': {expect}")
    region: str | tuple[int, int, int, int] | None = None
    if at:
        if where == "mask":
            region = "mask"
        else:
            box = _BOX.match(where.replace(" ", ""))
            if not box:
                raise NnfeatError(f"bad region '{_short(where)}' in target '{_short(source)}': expected @mask or "
                                  "@Y0:Y1,X0:X1 in output pixels, e.g. out:3@mask or out:3@8:24,16:40")
            y0, y1, x0, x1 = (int(v) for v in box.groups())
            if y1 <= y0 or x1 <= x0 or max(y1, x1) > MAX_INDEX:
                raise NnfeatError(f"empty or huge box '{where}' in target '{_short(source)}': write @Y0:Y1,X0:X1 "
                                  f"with Y0 < Y1 and X0 < X1 (rows Y0..Y1-1, columns X0..X1-1)")
            region = (y0, y1, x0, x1)
    value = what == "value"
    if value and region is not None:
        raise NnfeatError(f"target '{_short(source)}' is a value (a regression output has no pixels): drop "
                          f"'@{_short(where, 20)}'")
    cls: int | str | None = None
    if _INDEX.match(what):
        cls = int(what)
    elif what.lstrip("-").isdigit():
        raise NnfeatError(f"class index '{_short(what, 20)}' in target '{_short(source)}' is out of range: "
                          f"indices are 0..{MAX_INDEX:,}")
    elif what not in ("pred", "value"):
        cls = what
    return Target(part or None, cls, value, region, source)


def format_target(target: Target) -> str:
    """The canonical text of a target: ``Target("out", 3, region="mask")`` -> ``"out:3@mask"``."""
    what = "value" if target.value else "pred" if target.cls is None else str(target.cls)
    text = what if target.part is None else f"{target.part}:{what}"
    if target.region == "mask":
        text += "@mask"
    elif target.region is not None:
        y0, y1, x0, x1 = target.region
        text += f"@{y0}:{y1},{x0}:{x1}"
    return text


# -- the output's structure ---------------------------------------------------------------------------------
def describe_output(output: Any) -> str:
    """One line for a model's output, its batch axis as B: ``(B, 10)``, ``dict out (B, 21, 64, 64), aux ...``."""
    def shape(v) -> str:
        if not torch.is_tensor(v):
            return type(v).__name__
        return "(" + ", ".join(["B", *(str(s) for s in v.shape[1:])]) + ("," if v.dim() == 1 else "") + ")"

    if isinstance(output, dict):
        return "dict " + ", ".join(f"{k} {shape(v)}" for k, v in list(output.items())[:8])
    if isinstance(output, (tuple, list)):
        return f"{type(output).__name__} " + ", ".join(f"[{i}] {shape(v)}" for i, v in enumerate(output[:8]))
    return shape(output)


def select_output(output: Any, target: Target) -> torch.Tensor:
    """The tensor ``target`` explains: the output itself (element 0 of a tuple / list), ``output[part]`` of a dict,
    or element ``part`` of a tuple / list.

    Raises:
        NnfeatError: one line naming the output's structure and the part to give (a dict without a part, a missing
            key or element, a part that is no tensor).
    """
    part = target.part
    if isinstance(output, dict):
        if part is None:
            key = next(iter(output), "KEY")
            raise NnfeatError(f"the model's output is a {describe_output(output)}: say which part to explain, "
                              f"e.g. --target {key}:3 or {key}:3@mask")
        if part not in output:
            raise NnfeatError(f"target '{target}' names output part '{part}', but the model's output is a "
                              f"{describe_output(output)}: use one of its keys")
        chosen = output[part]
    elif isinstance(output, (tuple, list)):
        index = 0 if part is None else int(part) if part.isdigit() else None
        if index is None or index >= len(output):
            raise NnfeatError(f"target '{target}' names output part '{part}', but the model's output is a "
                              f"{describe_output(output)}: use an element index 0..{len(output) - 1}")
        chosen = output[index]
    elif part is not None:
        raise NnfeatError(f"target '{target}' names output part '{part}', but the model's output is one tensor "
                          f"{describe_output(output)}: drop '{part}:'")
    else:
        chosen = output
    if not torch.is_tensor(chosen):
        raise NnfeatError(f"target '{target}': that part of the model's output is a {type(chosen).__name__}, "
                          f"not a tensor ({describe_output(output)})")
    return chosen


def output_kind(scores: torch.Tensor, target: Target) -> str:
    """``vector`` (B, K), ``map`` (B, K, h, w) or ``value`` (B,) / (B, 1), checked against what ``target`` asks."""
    shape = describe_output(scores)
    if target.value:
        if scores.dim() == 1 or (scores.dim() == 2 and scores.shape[1] == 1):
            return "value"
        raise NnfeatError(f"target '{target}' asks for a value, but the output is {shape}: a value target needs "
                          f"(B,) or (B, 1); give a class index instead")
    if scores.dim() == 2:
        if target.region is not None:
            raise NnfeatError(f"target '{target}' has a region, but the output is {shape} (no pixels): drop the "
                              "@region, or explain a (B, K, H, W) map")
        return "vector"
    if scores.dim() == 4:
        return "map"
    if scores.dim() == 1:
        raise NnfeatError(f"the output is {shape}, one value per image: use --target value")
    if target.plain:
        raise NnfeatError(f"saliency needs a model whose output is (B, classes) logits; got {shape}")
    raise NnfeatError(f"target '{target}': the output is {shape}; a target needs (B, K) logits, a (B, K, H, W) map "
                      "or (B,) / (B, 1) values")


def check_classes(scores: torch.Tensor, classes: torch.Tensor, target: Target | None = None) -> None:
    """A one-line error when a class is not one of the K classes of (N, K[, h, w]) ``scores``."""
    k = scores.shape[1]
    if bool((classes < 0).any()) or bool((classes >= k).any()):
        bad = int(classes[(classes < 0) | (classes >= k)][0])
        if target is None or target.part is None:
            raise NnfeatError(f"target class {bad} out of range: the model has {k} classes (0..{k - 1})")
        raise NnfeatError(f"target class {bad} out of range: output part '{target.part}' has {k} classes "
                          f"(0..{k - 1})")


# -- resolving, per image -----------------------------------------------------------------------------------
def resolve_target(output: Any, target: Target, *, empty_mask: str = "error", check: bool = True) -> Target:
    """``target`` resolved for the N images of ``output`` (the unperturbed images' output): per image its class
    (the given one, or the predicted one: the arg-max logit, or on a map the class that wins the most pixels of
    the region) and, on a (N, K, h, w) map, its (N, h, w) region weights (the box, the mask of pixels whose
    arg-max is the class, or every pixel).

    empty_mask: for an ``@mask`` target whose class wins no pixel of an image: ``"error"`` (explaining an empty
        region is meaningless), or ``"all"``: that image's region is every pixel (a render starting from noise,
        where the class has no pixel yet, grows it from the whole map); ``"all"`` runs without a host sync.
    check: check the class range (a host sync); a caller that checked it on an earlier batch of the same
        output shape (a render's later steps) passes False.

    Raises:
        NnfeatError: one line for a part the output lacks, a target that does not fit the part's shape, a class
            out of range, a box outside the map, or an empty mask (naming the image).
    """
    if isinstance(target.cls, str):
        raise NnfeatError(f"unknown class '{target.cls}' in target '{target}': give a class index")
    scores = select_output(output, target).detach()
    kind = output_kind(scores, target)
    n = scores.shape[0]
    if kind == "value":
        return replace(target, classes=torch.full((n,), -1, dtype=torch.long, device=scores.device), weights=None)
    if kind == "vector":
        classes = scores.argmax(1) if target.cls is None else torch.full((n,), target.cls, device=scores.device)
        check_classes(scores, classes.long(), target)
        return replace(target, classes=classes.long(), weights=None)
    k, h, w = scores.shape[1:]
    weights = torch.ones((n, h, w), device=scores.device, dtype=torch.float32)
    if isinstance(target.region, tuple):
        y0, y1, x0, x1 = target.region
        if y1 > h or x1 > w:
            raise NnfeatError(f"box {y0}:{y1},{x0}:{x1} of target '{target}' leaves the {h}x{w} output map: rows "
                              f"must lie in 0..{h}, columns in 0..{w}")
        weights = torch.zeros_like(weights)
        weights[:, y0:y1, x0:x1] = 1
    winners = scores.argmax(1)  # (N, h, w)
    if target.cls is None:
        votes = torch.zeros((n, k), device=scores.device).scatter_add_(1, winners.flatten(1), weights.flatten(1))
        classes = votes.argmax(1)
    else:
        classes = torch.full((n,), target.cls, dtype=torch.long, device=scores.device)
        if check:
            check_classes(scores, classes, target)
    if target.region == "mask":
        weights = (winners == classes[:, None, None]).float()
        if empty_mask == "all":  # an image whose class wins no pixel: its whole map (no host sync)
            none = weights.flatten(1).sum(1) == 0
            return replace(target, classes=classes.long(), weights=torch.where(none[:, None, None], 1.0, weights))
        empty = (weights.flatten(1).sum(1) == 0).nonzero()
        if len(empty):
            i = int(empty[0])
            raise NnfeatError(f"target '{target}': class {int(classes[i])} wins no pixel of image {i}'s output map "
                              f"(its mask is empty): pick a class it predicts, pred@mask, or a box")
    return replace(target, classes=classes.long(), weights=weights)


def as_target(targets: Target | torch.Tensor) -> Target:
    """A resolved :class:`Target`; a (B,) tensor of class indices is a class of the output itself."""
    return targets if isinstance(targets, Target) else Target(classes=targets)


def cat_targets(parts: Sequence[Target]) -> Target:
    """Resolved targets of consecutive chunks of one batch -> the batch's."""
    first = parts[0]
    weights = None if first.weights is None else torch.cat([p.weights for p in parts])
    return replace(first, classes=torch.cat([p.classes for p in parts]), weights=weights)


# -- the scores ----------------------------------------------------------------------------------------------
def target_scores(output: Any, target: Target | torch.Tensor, *, check: bool = True) -> torch.Tensor:
    """The model's ``output`` for N images and their resolved ``target`` (or (N,) class indices) -> (N,) scores,
    differentiable: the class logit (a (N, K) output), the class's map summed over the region weights (a
    (N, K, h, w) map), or the value (a (N,) / (N, 1) output).

    Raises:
        NnfeatError: one line when the output does not fit the target or a class is out of range.
    """
    target = as_target(target)
    scores = select_output(output, target)
    kind = output_kind(scores, target)
    if kind == "value":
        return scores.reshape(len(scores))
    if check:  # a host sync: see resolve_target's ``check``
        check_classes(scores, target.classes, target)
    if kind == "vector":
        return scores.gather(1, target.classes[:, None])[:, 0]
    picked = scores[torch.arange(len(scores), device=scores.device), target.classes]  # (N, h, w)
    if target.weights is None:
        return picked.sum((1, 2))
    return (picked * target.weights.to(picked.dtype)).sum((1, 2))


def target_probabilities(output: Any, target: Target | torch.Tensor) -> torch.Tensor:
    """What deletion / insertion track, (N,): the softmax probability of the class (a (N, K) output); its
    softmax probability averaged over the region weights (a map); the value itself (a regression output)."""
    target = as_target(target)
    scores = select_output(output, target)
    kind = output_kind(scores, target)
    if kind == "value":
        return scores.float().reshape(len(scores))
    probs = torch.softmax(scores.float(), 1)
    if kind == "vector":
        return probs.gather(1, target.classes[:, None])[:, 0]
    picked = probs[torch.arange(len(probs), device=probs.device), target.classes]
    weights = torch.ones_like(picked) if target.weights is None else target.weights.to(picked)
    return (picked * weights).sum((1, 2)) / weights.sum((1, 2)).clamp_min(1e-12)


def describe_target(target: Target) -> dict:
    """The record of a target: its text and, in words, the score explained and what deletion / insertion track."""
    what = ("the output value" if target.value else
            "the predicted class" if target.cls is None else f"class {target.cls}")
    where = "the output" if target.part is None else f"output part '{target.part}'"
    if target.region == "mask":
        where += (" summed over its predicted mask (the pixels whose argmax is the class, fixed from each "
                  "unperturbed image)")
    elif target.region is not None:
        y0, y1, x0, x1 = target.region
        where += f" summed over rows {y0}..{y1 - 1}, columns {x0}..{x1 - 1} of the map"
    return {"text": str(target), "part": target.part, "class": target.cls,
            "region": list(target.region) if isinstance(target.region, tuple) else target.region,
            "score": f"{what} of {where}",
            "deletion_insertion_score": ("the value itself" if target.value else
                                         "softmax probability of the class (averaged over the region on a map)")}


__all__ = ["Target", "parse_target", "format_target", "describe_output", "select_output", "output_kind",
           "check_classes", "resolve_target", "as_target", "cat_targets", "target_scores", "target_probabilities",
           "describe_target", "EXAMPLES", "MAX_INDEX"]
