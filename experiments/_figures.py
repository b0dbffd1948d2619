"""Shared helpers for the figure scripts ``experiments/figNN_*.py``.

Every figure script:

* takes ``--model`` (default ``inceptionv1``, the papers' network, with the papers' units), ``--quick``
  (the same code on ``cifar10-resnet20`` with a handful of steps; what CI runs), ``--out`` (default
  ``out``), and optional overrides ``--steps``, ``--size``, ``--seed``, ``--device``, ``--images``;
* writes ``OUT/figures/<name>.png`` (the figure), ``OUT/figures/<name>.json`` (its numbers and settings)
  and one line for it in ``OUT/figures/index.html`` (added, or replaced on a re-run), all atomically.

Units: :data:`PAPER_UNITS` holds the units of the Distill articles for Lucid's InceptionV1, matching
choices for ``torchvision:googlenet`` and the CIFAR-10 ResNets; any other model gets units picked
from its layer list by :func:`auto_units`.
"""

from __future__ import annotations

import argparse
import datetime
import html
import math
import os
import re
import sys
import textwrap
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"
CIFAR_NPZ = SHARED_DIR / "data" / "cifar10_test.npz"

try:  # run from a checkout without `pip install -e .`
    import nnfeat  # noqa: F401
except ImportError:  # pragma: no cover - depends on how the repo is installed
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import nnfeat  # noqa: E402
from nnfeat.errors import NnfeatError  # noqa: E402
from nnfeat.engine.objectives import Objective  # noqa: E402

FULL_MODEL = "inceptionv1"
QUICK_MODEL = "cifar10-resnet20"

Unit = tuple[str, int]

# ---------------------------------------------------------------------------------------------------
# Units

#: Units per model. ``main``: Lucid's tutorial unit; ``second``: the interpolation target; ``addition``:
#: the pair of the neuron-interaction notebook; ``diversity``, ``progress``, ``regularize``, ``examples``:
#: the units of those figures; ``dream``: the DeepDream layer; ``classes``: logit/softmax classes;
#: ``atlas_layer`` / ``atlas_class``; ``maco``: the units of the MACO comparison; ``size``: render size.
PAPER_UNITS: dict[str, dict] = {
    "inceptionv1": {
        "main": ("mixed4a_pre_relu", 476),
        "second": ("mixed4a_pre_relu", 460),
        "addition": (("mixed4b_pre_relu", 111), ("mixed4a_pre_relu", 476)),
        "diversity": ("mixed4a_pre_relu", 97),
        "progress": ("mixed4b_pre_relu", 443),
        "regularize": ("mixed4b_pre_relu", 443),
        "examples": ("mixed4a_pre_relu", 476),
        "dream": "mixed4a",
        "classes": (1, 2),
        "atlas_layer": "mixed4c",
        "atlas_class": 1,
        "maco": (("mixed4a_pre_relu", 476), ("mixed4a_pre_relu", 460), ("mixed4b_pre_relu", 443),
                 ("mixed4d_pre_relu", 504)),
        "diversity_weight": 1e2,
        "size": 128,
    },
    "torchvision:googlenet": {
        "main": ("inception4a", 476),
        "second": ("inception4a", 460),
        "addition": (("inception4b", 111), ("inception4a", 476)),
        "diversity": ("inception4a", 97),
        "progress": ("inception4b", 443),
        "regularize": ("inception4b", 443),
        "examples": ("inception4a", 476),
        "dream": "inception4a",
        "classes": (1, 2),
        "atlas_layer": "inception4c",
        "atlas_class": 1,
        "maco": (("inception4a", 476), ("inception4a", 460), ("inception4b", 443), ("inception4d", 504)),
        "diversity_weight": 1e2,
        "size": 128,
    },
}
for _depth in (20, 32, 44, 56):
    PAPER_UNITS[f"cifar10-resnet{_depth}"] = {
        "main": ("layer3", 5),
        "second": ("layer3", 9),
        "addition": (("layer3", 5), ("layer3", 9)),
        "diversity": ("layer3", 12),
        "progress": ("layer3", 5),
        "regularize": ("layer2", 7),
        "examples": ("layer3.2.bn2", 5),  # before the residual add and ReLU: it has a sign, so "negative" means something
        "dream": "layer2",
        "classes": (3, 8),  # cat, ship
        "atlas_layer": "layer3",
        "atlas_class": 3,
        "maco": (("layer2", 7), ("layer3", 5), ("layer3", 9), ("layer3", 12)),
        "diversity_weight": None,  # scaled to the unit's own activation, see fig04
        "size": 32,
    }


def auto_units(model) -> dict:
    """Units for a model without an entry in :data:`PAPER_UNITS`: channels 0-3 of the top-level conv layers
    at about 2/3 and at the end of the network."""
    rows = [(name, shape) for name, shape, _ in model.describe_layers()
            if shape is not None and len(shape) == 3 and "." not in name and name != "output"]
    if len(rows) < 2:
        raise NnfeatError(f"model '{model.name}' has fewer than two top-level convolutional layers: "
                          f"use one of {', '.join(PAPER_UNITS)}")
    mid, late = rows[(2 * len(rows)) // 3 - 1][0], rows[-1][0]
    mid_c = min(4, rows[(2 * len(rows)) // 3 - 1][1][0])
    late_c = min(4, rows[-1][1][0])
    shapes = model.layer_shapes(["output"])
    classes = shapes["output"][1] if len(shapes["output"]) == 2 else 1
    return {
        "main": (mid, 0), "second": (mid, 1 % mid_c), "addition": ((mid, 0), (late, 0)),
        "diversity": (mid, 2 % mid_c), "progress": (mid, 0), "regularize": (mid, 3 % mid_c), "examples": (mid, 0),
        "dream": mid, "classes": (0, 1 % classes), "atlas_layer": late, "atlas_class": 0,
        "maco": ((mid, 0), (mid, 1 % mid_c), (late, 0), (late, 1 % late_c)),
        "diversity_weight": None, "size": max(model.input_size),
    }


def unit_label(unit: Unit) -> str:
    return f"{unit[0]}:{unit[1]}"


# ---------------------------------------------------------------------------------------------------
# Arguments and the run


def make_parser(description: str, *, images: bool = False) -> argparse.ArgumentParser:
    """The common options; ``images=True`` adds ``--images`` (an image source for dataset-based figures)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", default=None,
                   help=f"model to visualize (default {FULL_MODEL}; with --quick {QUICK_MODEL})")
    p.add_argument("--quick", action="store_true",
                   help=f"few steps on {QUICK_MODEL} (what CI runs); seconds instead of minutes")
    p.add_argument("--out", default="out", help="output folder; the figure goes to OUT/figures/ (default out)")
    p.add_argument("--steps", type=int, default=None, help="override the number of optimization steps")
    p.add_argument("--size", type=int, default=None, help="override the render size in px")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available, else cpu)")
    if images:
        p.add_argument("--images", default=None,
                       help="image source (folder, .npz, dataset name); default: ../shared CIFAR-10 for CIFAR models")
    return p


@dataclass
class Run:
    """One figure run: parsed options, the loaded model and its units."""

    name: str
    title: str
    args: argparse.Namespace
    model: nnfeat.Model
    units: dict
    started: float = field(default_factory=lambda: datetime.datetime.now().timestamp())

    @property
    def quick(self) -> bool:
        return bool(self.args.quick)

    @property
    def model_name(self) -> str:
        return self.model.name

    @property
    def size(self) -> int:
        return int(self.args.size or self.units["size"])

    @property
    def figures_dir(self) -> Path:
        return Path(self.args.out) / "figures"

    def steps(self, full: int, quick: int) -> int:
        """``--steps`` if given, else ``quick`` in quick mode and ``full`` otherwise."""
        if self.args.steps is not None:
            if self.args.steps < 1:
                raise NnfeatError(f"--steps must be at least 1, got {self.args.steps}")
            return int(self.args.steps)
        return quick if self.quick else full

    def thresholds(self, full: Sequence[int], quick: Sequence[int]) -> list[int]:
        """Threshold steps; with ``--steps`` the defaults are rescaled to end at that step count."""
        base = list(quick if self.quick else full)
        if self.args.steps is None:
            return base
        scaled = sorted({max(1, round(t * self.args.steps / base[-1])) for t in base})
        return scaled

    def render(self, objective: Objective, **kwargs) -> nnfeat.RenderResult:
        """:func:`nnfeat.render` with this run's size, seed, device and progress settings as defaults."""
        kwargs.setdefault("size", self.size)
        kwargs.setdefault("seed", self.args.seed)
        kwargs.setdefault("device", self.model.device)
        kwargs.setdefault("progress", not self.quick)
        return nnfeat.render(self.model, objective, **kwargs)

    def images(self, required_for: str):
        """The ``--images`` source as an :class:`nnfeat.data.ImageSet` (CIFAR-10 by default for CIFAR models)."""
        from nnfeat.data import load_images

        source = getattr(self.args, "images", None)
        if source is None and self.model_name.startswith("cifar10-") and CIFAR_NPZ.is_file():
            source = CIFAR_NPZ
        if source is None:
            raise NnfeatError(f"{required_for} needs natural images for {self.model_name}: pass --images FOLDER "
                              "(e.g. the ImageNet validation set) or an .npz file")
        limit = 400 if self.quick else None
        return load_images(source, size=self.model.input_size, limit=limit)

    def log(self, text: str) -> None:
        print(f"[{self.name}] {text}", flush=True)


def setup_weights_path(model_name: str) -> None:
    """For CIFAR models, look for weights in ../shared/models too when NNFEAT_WEIGHTS_PATH is unset."""
    if model_name.startswith("cifar10-") and not os.environ.get("NNFEAT_WEIGHTS_PATH") and \
            (SHARED_DIR / "models").is_dir():
        os.environ["NNFEAT_WEIGHTS_PATH"] = str(SHARED_DIR / "models")


def pick_device(device: str | None) -> str:
    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def setup(name: str, title: str, args: argparse.Namespace) -> Run:
    """Load the model (``--model``, or the quick/full default) and its units."""
    if args.model is None:
        args.model = QUICK_MODEL if args.quick else FULL_MODEL
    setup_weights_path(args.model)
    if args.size is not None and args.size < 8:
        raise NnfeatError(f"--size must be at least 8 px, got {args.size}")
    model = nnfeat.load_model(args.model, device=pick_device(args.device))
    units = PAPER_UNITS.get(model.name) or auto_units(model)
    return Run(name=name, title=title, args=args, model=model, units=units)


def main_wrapper(body: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run ``body(argv)``; a user error becomes one line on stderr and exit status 2."""
    try:
        return int(body(argv) or 0)
    except NnfeatError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


# ---------------------------------------------------------------------------------------------------
# Objectives helpers


def evaluate_each(model, objective: Objective, images: torch.Tensor) -> list[float]:
    """``objective`` on each image (no transforms) -> list of floats."""
    values = nnfeat.evaluate(model, objective, images.to(model.device))
    return [float(v) for v in values]


def high_frequency_share(images: torch.Tensor) -> list[float]:
    """Per image (B,3,H,W): the share of spectral energy (DC excluded) above half the Nyquist frequency."""
    centred = images.float() - images.float().mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.rfft2(centred, norm="ortho").abs().pow(2).sum(1)  # (B, H, W//2+1)
    h, w = images.shape[-2:]
    fy = torch.fft.fftfreq(h).abs().view(-1, 1)
    fx = torch.fft.rfftfreq(w).view(1, -1)
    high = (torch.maximum(fy, fx) > 0.25).float()
    share = (power * high).flatten(1).sum(1) / power.flatten(1).sum(1).clamp_min(1e-12)
    return [float(s) for s in share]


# ---------------------------------------------------------------------------------------------------
# Drawing


@dataclass
class Panel:
    """One picture of a figure: (3, H, W) in [0, 1] and a caption under it."""

    image: torch.Tensor
    caption: str = ""


Row = tuple[str, Sequence[Panel]]

_CELL_MIN = 112      # pictures are upscaled (nearest) to at least this many px on their longer side
_LABEL_WIDTH = 150
_PAD = 8


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _display(image: torch.Tensor) -> np.ndarray:
    image = image.detach().float().cpu().clamp(0, 1)
    if image.dim() == 2:
        image = image.unsqueeze(0)
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    factor = max(1, math.ceil(_CELL_MIN / max(image.shape[-2:])))
    image = image.repeat_interleave(factor, -2).repeat_interleave(factor, -1)
    return (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def upscale(images: torch.Tensor, size: int, target: int = 64) -> torch.Tensor:
    """(B,3,H,W) -> nearest-upscaled so that ``size`` px become at least ``target`` px."""
    from nnfeat.io import upscale_nearest

    return upscale_nearest(images, max(1, math.ceil(target / size)))


def compose(title: str, rows: Sequence[Row], note: str = "") -> np.ndarray:
    """Lay out labelled rows of captioned pictures on white -> (H, W, 3) uint8."""
    from PIL import Image, ImageDraw

    title_font, label_font, caption_font = _font(16), _font(12), _font(11)
    pictures = [[_display(p.image) for p in panels] for _, panels in rows]
    widths = [sum(pic.shape[1] + _PAD for pic in row) for row in pictures]
    caption_lines = 3
    row_heights = [max((pic.shape[0] for pic in row), default=0) + caption_lines * 13 + _PAD for row in pictures]
    note_lines = textwrap.wrap(note, 150) if note else []
    width = max(720, _LABEL_WIDTH + max(widths, default=0) + _PAD)
    height = 34 + sum(row_heights) + 14 * len(note_lines) + _PAD
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((_PAD, 8), title, fill="black", font=title_font)
    y = 34
    for (label, panels), pics, row_h in zip(rows, pictures, row_heights):
        for k, line in enumerate(textwrap.wrap(label, 22)[:6]):
            draw.text((_PAD, y + 4 + 14 * k), line, fill="black", font=label_font)
        x = _LABEL_WIDTH
        for panel, pic in zip(panels, pics):
            canvas.paste(Image.fromarray(pic), (x, y))
            chars = max(8, pic.shape[1] // 6)
            for k, line in enumerate(textwrap.wrap(panel.caption, chars)[:caption_lines]):
                draw.text((x, y + pic.shape[0] + 2 + 12 * k), line, fill=(60, 60, 60), font=caption_font)
            x += pic.shape[1] + _PAD
        y += row_h
    for k, line in enumerate(note_lines):
        draw.text((_PAD, y + 14 * k), line, fill=(60, 60, 60), font=caption_font)
    return np.asarray(canvas)


def curve_image(series: dict[str, Sequence[float]], width: int = 320, height: int = 160) -> torch.Tensor:
    """A small line chart of one or more value series -> (3, H, W) in [0, 1] (for objective-vs-step plots)."""
    from PIL import Image, ImageDraw

    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    values = [v for s in series.values() for v in s if math.isfinite(v)]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    if high - low < 1e-12:
        high = low + 1.0
    colours = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)]
    left, bottom = 36, height - 16
    draw.line([(left, 6), (left, bottom), (width - 4, bottom)], fill="black")
    font = _font(10)
    draw.text((2, 2), f"{high:.3g}", fill="black", font=font)
    draw.text((2, bottom - 10), f"{low:.3g}", fill="black", font=font)
    for k, (name, s) in enumerate(series.items()):
        s = list(s)
        if not s:
            continue
        pts = [(left + (width - 4 - left) * i / max(1, len(s) - 1), bottom - (bottom - 6) * (v - low) / (high - low))
               for i, v in enumerate(s)]
        colour = colours[k % len(colours)]
        if len(pts) > 1:
            draw.line(pts, fill=colour, width=2)
        draw.text((left + 6, 8 + 12 * k), name, fill=colour, font=font)
    draw.text((width - 60, bottom + 2), f"step {len(next(iter(series.values()), []))}", fill="black", font=font)
    return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1).float() / 255.0


# ---------------------------------------------------------------------------------------------------
# Output


INDEX_HEAD = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>nnfeat figures</title>
<style>body{font-family:sans-serif;margin:2em;max-width:1100px}li{margin:1.5em 0;list-style:none}
img{max-width:100%;border:1px solid #ccc}.meta{color:#666;font-size:90%}</style></head><body>
<h1>nnfeat: the papers' figures</h1>
<p>Each figure is written by <code>experiments/&lt;name&gt;.py</code>; re-running a script replaces its line.</p>
<ul>
"""
INDEX_TAIL = "</ul>\n</body></html>\n"
_ENTRY = re.compile(r'^<li id="fig-([A-Za-z0-9_.-]+)">.*</li>$')


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive lock on ``directory/.index.lock`` (where the OS has ``fcntl``), for concurrent scripts."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: the atomic replace alone
        yield
        return
    with open(directory / ".index.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def index_entries(index: Path) -> dict[str, str]:
    """The figure lines of an ``index.html`` by figure name."""
    if not index.is_file():
        return {}
    entries = {}
    for line in index.read_text(encoding="utf-8").splitlines():
        match = _ENTRY.match(line.strip())
        if match:
            entries[match.group(1)] = line.strip()
    return entries


def update_index(directory: Path, name: str, title: str, caption: str, meta: str) -> Path:
    """Add or replace the line of figure ``name`` in ``directory/index.html`` (atomic, under a lock)."""
    from nnfeat.io import write_text

    line = (f'<li id="fig-{name}"><h2>{html.escape(title)}</h2><a href="{name}.png"><img src="{name}.png" '
            f'alt="{html.escape(title)}"></a><p>{html.escape(caption)}</p><p class="meta">{html.escape(meta)} '
            f'&middot; <a href="{name}.json">numbers</a></p></li>')
    index = directory / "index.html"
    with _locked(directory):
        entries = index_entries(index)
        entries[name] = line
        text = INDEX_HEAD + "".join(entries[k] + "\n" for k in sorted(entries)) + INDEX_TAIL
        write_text(index, text)
    return index


def save_figure(run: Run, rows: Sequence[Row], *, caption: str, data: dict, note: str = "") -> Path:
    """Write ``<name>.png``, ``<name>.json`` and the figure's ``index.html`` line; return the PNG path."""
    from nnfeat.io import save_image, write_json

    directory = run.figures_dir
    directory.mkdir(parents=True, exist_ok=True)
    mode = "quick" if run.quick else "full"
    heading = f"{run.title} | {run.model_name}" + (" (quick)" if run.quick else "")
    png = save_image(directory / f"{run.name}.png", compose(heading, rows, note))
    elapsed = datetime.datetime.now().timestamp() - run.started
    record = {
        "figure": run.name, "title": run.title, "caption": caption, "model": run.model_name, "mode": mode,
        "size": run.size, "seed": run.args.seed, "device": str(run.model.device),
        "seconds": round(elapsed, 2), "command": " ".join(["python", f"experiments/{run.name}.py", *sys.argv[1:]])
        if sys.argv and sys.argv[0].endswith(f"{run.name}.py") else None, **data,
    }
    write_json(directory / f"{run.name}.json", record)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    update_index(directory, run.name, run.title, caption,
                 f"{run.model_name}, {mode} mode, {run.size} px, seed {run.args.seed}, {elapsed:.0f} s, {stamp}")
    run.log(f"wrote {png}")
    return png
