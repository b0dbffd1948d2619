"""``nnfeat demo``: the offline main job, the report of the embedded ``digits-cnn`` over the digits, and of
``digits-vit``.

Trains (or reuses) both digits models, then builds :func:`nnfeat.ops.report.report` of each over all 1,797 of
scikit-learn's digits (``OUT/digits-cnn/``, ``OUT/digits-vit/``: architecture, every layer's unit renders,
dataset examples, heatmaps, projections, unit pages with diversity renders and filters, the classes page with
saliency and its sanity numbers, the most uncertain digits, the ViT's attention and rollout; the CNN's
``conv3`` also gets an activation atlas), and writes ``OUT/index.html``: the CNN's class renders (drawn with
:func:`class_render_settings`, so they read as digits), each report's key pictures linked to its pages, and the
uncertainty of the two models as an ensemble. Both reports resume: a second run reuses what is done.

Then the text reports (:func:`nnfeat.ops.text_report.text_report`): ``OUT/dates-seq2seq/`` over a seeded sample of
its own date generator (:func:`nnfeat.models.dates_data.make_examples`, held-out dates), and ``OUT/minilm/`` over
ordinary sentences of nnfeat's own grammar (:func:`demo_sentences`) when the text extra
is installed (else the page says how to install it); each gets a section of ``OUT/index.html``.
"""

from __future__ import annotations

import importlib.util
import random
import time
from html import escape
from pathlib import Path

from nnfeat.data import load_images
from nnfeat.engine.objectives import l1, logit, total_variation
from nnfeat.engine.transforms import Jitter, Pad, RandomAffine, RandomRotate, RandomScale
from nnfeat.io import write_json
from nnfeat.errors import NnfeatError
from nnfeat.models.base import Model
from nnfeat.models.dates_data import make_examples
from nnfeat.models.hf import minilm_path
from nnfeat.models.shortcut_text import SLOTS, TEMPLATES
from nnfeat.models.zoo import load_model
from nnfeat.ops.report import ReportResult, report, slug
from nnfeat.ops.text_report import TextReportResult, text_report
from nnfeat.ops.uncertainty import uncertainty
from nnfeat.views.gallery import write_gallery

#: The class renders: a 12 px Fourier image upsampled to the net's 32 px, on a dark-background prior
#: (L1 toward 0: the digits are white strokes on black) with a smoothness prior (total variation), jittered on a
#: black fill. With the adversarially trained digits-cnn this reads as digits to classifiers of other families
#: (``experiments/demo_transfer.py``).
CLASS_RENDER_SIZE = 12
CLASS_L1_WEIGHT = 20.0
CLASS_TV_WEIGHT = 10.0
#: The class renders read as digits after 256 steps (measured on seeds 0-4); the report's other renders take 128.
CLASS_RENDER_STEPS = 256
ATLAS_LAYER = "conv3"
MODELS = ("digits-cnn", "digits-vit")
#: units per layer of the demo's reports (the report's default is 16): at 16 the demo took 185 s of its 3-minute
#: budget on 7 December, the diversity renders (3 per unit) 76 s of it; 12 keeps every layer page and leaves margin
DEMO_UNITS = 12
#: the text reports: texts per model and the seed of their sample
TEXT_N, TEXT_SEED = 16, 0


def class_render_settings(steps: int = 256, seed: int = 0) -> tuple:
    """The demo's class-render call as ``(objective, kwargs)``: ``render(model, objective, **kwargs)``."""
    shift = CLASS_RENDER_SIZE / 30.0  # mild: +-1/30 of the side, 5 % scale, 5 degrees, on black (not grey) fill
    transforms = RandomAffine([Pad(shift), Jitter(2 * shift), RandomScale([0.95, 1.0, 1.05]),
                               RandomRotate([-5.0, 0.0, 5.0])], 32, fill=0.0)
    objective = logit(list(range(10))) - CLASS_L1_WEIGHT * l1(0.0) - CLASS_TV_WEIGHT * total_variation()
    return objective, dict(size=CLASS_RENDER_SIZE, model_input_size=32, param="fft", transforms=transforms,
                           steps=steps, seed=seed)


def readable_class_render(steps: int, seed: int) -> tuple:
    """The report's class-render recipe for digits-cnn: :func:`class_render_settings` at no fewer than
    :data:`CLASS_RENDER_STEPS` steps."""
    return class_render_settings(steps=max(steps, CLASS_RENDER_STEPS), seed=seed)


def run_demo(out: Path, *, steps: int = 128, atlas: bool = True, progress: bool = True) -> Path:
    """Build the demo into ``out`` (resumable); returns the path of ``index.html``."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    models, reports, seconds = {}, {}, {}
    for name in MODELS:
        t0 = time.perf_counter()
        models[name] = load_model(name)
        print(f"{name} ready ({time.perf_counter() - t0:.1f} s)", flush=True)
        digits = load_images("digits", size=models[name].input_size)
        options = dict(class_render=readable_class_render, atlas=[ATLAS_LAYER] if atlas else None) \
            if name == "digits-cnn" else {}
        t0 = time.perf_counter()
        reports[name] = report(models[name], digits, out / name, steps=steps, units_per_layer=DEMO_UNITS,
                               progress=progress, **options)
        seconds[name] = round(time.perf_counter() - t0, 1)
        print(f"{name} report: {out / name / 'index.html'} ({seconds[name]:.0f} s)", flush=True)
    sections = [_class_section(reports["digits-cnn"], out)]
    sections += [_report_section(reports[name], out) for name in MODELS]
    sections.append(_ensemble_section([models[name] for name in MODELS], out))
    for name, texts in (("dates-seq2seq", demo_dates), ("minilm", demo_sentences)):
        t0 = time.perf_counter()
        section = _text_report(name, texts, out, progress)
        seconds[name] = round(time.perf_counter() - t0, 1)
        sections.append(section)
    index = write_gallery(out / "index.html", "nnfeat demo: digits-cnn, digits-vit and text models", sections)
    elapsed = round(time.perf_counter() - started, 1)
    write_json(out / "demo.json", {"elapsed_seconds": elapsed, "report_seconds": seconds, "steps": steps,
                                   "atlas": atlas})
    print(f"wrote {index} ({elapsed:.0f} s)", flush=True)
    return index


def demo_dates(n: int = TEXT_N, seed: int = TEXT_SEED) -> list[str]:
    """The dates-seq2seq report's texts: ``n`` written dates from its own generator (held-out dates, ``seed``)."""
    return [example.source for example in make_examples(n, seed=seed, split="heldout")]


def demo_sentences(n: int = TEXT_N, seed: int = TEXT_SEED) -> list[str]:
    """The minilm report's texts: ``n`` ordinary sentences of nnfeat's own grammar (the shortcut-text fixture's
    sentence patterns and words, no planted token), drawn from ``seed`` (a private generator)."""
    rng = random.Random(f"demo-sentences-{seed}")
    texts = []
    for _ in range(n):
        words = [rng.choice(SLOTS[slot]) for slot in rng.choice(TEMPLATES)]
        texts.append(" ".join(words[:-1]) + words[-1])
    return texts


def _text_report(name: str, texts, out: Path, progress: bool) -> dict:
    """The text report of ``name`` over ``texts()`` into ``out/<name>`` and its section; minilm without the text
    extra: a section that says so."""
    if name == "minilm":
        try:
            minilm_path()
            if importlib.util.find_spec("transformers") is None:
                raise NnfeatError("minilm needs transformers: pip install 'nnfeat[text]'")
        except NnfeatError as err:
            print(f"minilm report skipped: {err}", flush=True)
            return {"title": "The minilm text report", "note": f"Skipped: {escape(str(err))}", "items": []}
    t0 = time.perf_counter()
    model = load_model(name)
    result = text_report(model, texts(), out / name, progress=progress)
    print(f"{name} text report: {out / name / 'index.html'} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return _text_section(result, out)


def _text_section(result: TextReportResult, out: Path) -> dict:
    """The text report's pictures (those its stages wrote), each linked to its section of the report's index."""
    folder = Path(result.out).relative_to(out).as_posix()
    pictures = (("attention/attention.png", "attention", "attention"),
                ("embeddings/projection.png", "embeddings", "embeddings"),
                ("saliency/saliency.png", "saliency and its numbers", "saliency"),
                ("logit-lens/logit-lens.png", "logit lens", "logit-lens"))
    items = [{"src": f"{folder}/{src}", "caption": caption, "href": f"{folder}/index.html#{anchor}"}
             for src, caption, anchor in pictures if (Path(result.out) / src).is_file()]
    s = result.settings
    left = "".join(f" {stage}: {escape(note)}." for stage, note in result.notes.items())
    return {"title": f"The {result.model} text report",
            "note": f"<a href='{folder}/index.html'>Open the report</a>: {s['n']} texts; the architecture, the "
                    f"attention of every head with its scores, the embeddings with neighbours, {s['units_per_layer']} "
                    f"units of {len(s['layers'])} layers with their contexts, saliency with its numbers "
                    f"(nnfeat report {result.model} --text-file FILE).{' Left out:' + left if left else ''}",
            "items": items, "wide": True}


def _class_section(result: ReportResult, out: Path) -> dict:
    folder = Path(result.out).relative_to(out)
    items = [{"src": f"{folder}/classes/renders/render-{k}.png", "caption": f"digit {k}",
              "href": f"{folder}/classes/index.html"} for k in range(10)]
    return {"title": "What digits-cnn draws for each digit",
            "note": f"One render per class logit, {CLASS_RENDER_STEPS} steps, a 12 px Fourier image with a dark-background "
                    "(L1) and a smoothness (total variation) prior; digits-cnn is adversarially trained, so they read "
                    f"as digits. <a href='{folder}/classes/index.html'>The classes page</a> adds saliency maps with "
                    "their sanity numbers and the most uncertain digits.", "items": items}


def _report_section(result: ReportResult, out: Path) -> dict:
    folder = Path(result.out).relative_to(out)
    items = []
    for layer, channels in result.layers.items():
        if channels:
            items.append({"src": f"{folder}/layers/{slug(layer)}/render/channel-{channels[0]}.png",
                          "caption": f"{layer}:{channels[0]}", "href": f"{folder}/layers/{slug(layer)}/index.html"})
    extra = ""
    if (Path(result.out) / "classes" / "attention" / "attention.png").is_file():
        items.append({"src": f"{folder}/classes/attention/attention.png", "caption": "attention and rollout",
                      "href": f"{folder}/classes/index.html"})
        extra = " Its classes page shows where the class token looks, per layer and head, with rollout."
    if any(layer.startswith(ATLAS_LAYER) for layer in result.settings.get("atlas", [])):
        atlas = f"{folder}/layers/{slug(ATLAS_LAYER)}/atlas"
        items.append({"src": f"{atlas}/atlas.png", "caption": f"activation atlas of {ATLAS_LAYER}",
                      "href": f"{atlas}/atlas.html"})
    units = sum(map(len, result.layers.values()))
    return {"title": f"The {result.model} report",
            "note": f"<a href='{folder}/index.html'>Open the report</a>: the architecture, {len(result.layers)} layers "
                    f"and {units} units, each with its render, dataset examples and heatmaps (nnfeat report). "
                    f"Click a picture for its page.{extra}", "items": items, "wide": False}


def _ensemble_section(models: list[Model], out: Path) -> dict:
    """The uncertainty of the CNN and the ViT as an ensemble over every digit."""
    digits = load_images("digits", size=models[0].input_size)
    unsure = uncertainty(models, digits, method="ensemble", top=8)
    unsure.save(out / "ensemble", timing=False)
    record = unsure.record()
    summary = (record.get("metrics") or {}).get(record.get("combined"), {})
    numbers = ", ".join(f"{name} {summary[key]:.3f}" for name, key in
                        (("accuracy", "accuracy"), ("ECE", "ece"), ("error-detection AUROC", "error_auroc"))
                        if isinstance(summary.get(key), float))
    return {"title": "Both models as an ensemble: uncertainty",
            "note": f"All {len(digits)} digits (nnfeat uncertainty --method ensemble){': ' + numbers if numbers else ''}. "
                    "The most uncertain digits, with each member's gradient saliency map, and the reliability diagram.",
            "items": [{"src": "ensemble/uncertainty.png", "caption": "uncertainty.png"},
                      {"src": "ensemble/reliability.png", "caption": "reliability.png"}], "wide": True}
