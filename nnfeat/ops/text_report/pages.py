"""The index page of the text report: :func:`write_index` reads each finished stage's record (``<kind>.json`` in
its folder: the files it wrote, its numbers) and the notes of the stages left out (the manifest), and draws
:mod:`nnfeat.views.text_report_page`. Only files that exist are linked, so every link resolves."""

from __future__ import annotations

from pathlib import Path

from nnfeat.io import read_json
from nnfeat.ops.report.context import slug
from nnfeat.ops.report.manifest import read_notes
from nnfeat.ops.text_report.context import FOLDERS, TextReportContext
from nnfeat.views.text_report_page import TextSection, write_text_report_page

#: per stage kind: its record's file name, its title and one line on what it shows
VIEWS = {
    "graph": ("graph.json", "Architecture", "The model's graph, traced on the first text: modules, shapes, "
              "parameters; each units layer's node links to its units page."),
    "attention": ("attention.json", "Attention", "The attention model view of a sample of the texts (every layer "
                  "and head), with each head's scores (previous token, induction, duplicate, diagonal, first "
                  "token; cross attention: alignment) and the rollout."),
    "embeddings": ("projection.json", "Embeddings", "The input embeddings of the texts' most frequent tokens laid "
                   "out in 2-D, with the cosine neighbours of the most frequent ones."),
    "units": ("examples.json", "Units", "A few units of the layer: the top- and bottom-activating contexts over "
              "every text (encoder-decoder models: each unit's activation over a sample of the texts)."),
    "saliency": ("saliency.json", "Saliency", "Which tokens decided, per method, for a sample of the texts, with "
                 "the numbers that say how far to trust each method (deletion / insertion AUC beside a random "
                 "ranking)."),
    "logit-lens": ("logit-lens.json", "Logit lens", "What the model would predict if it stopped after each block: "
                   "per layer and position the top tokens and the rank of the actual next token."),
}


def _stage_folder(ctx: TextReportContext, stage: str) -> Path:
    kind, _, layer = stage.partition(":")
    return ctx.folder(kind, layer or None)


def _facts(kind: str, record: dict) -> list[str]:
    """A few numbers of a finished view, as lines."""
    if kind == "attention":
        best: dict[str, tuple[float, str, int]] = {}
        for layer, scores in (record.get("scores") or {}).items():
            for name, values in scores.items():
                for head, value in enumerate(values):
                    if value is not None and (name not in best or value > best[name][0]):
                        best[name] = (float(value), layer, head)
        return [f"strongest {name.replace('_', '-')} head: {layer} head {head} ({value:.3f})"
                for name, (value, layer, head) in sorted(best.items())]
    if kind == "embeddings":
        lines = [f"trustworthiness of the layout: {record['scores']['trustworthiness']:.3f} "
                 f"({record.get('points')} tokens, {record.get('method')})"] if record.get("scores") else []
        for entry in record.get("neighbours") or []:
            near = ", ".join(f"{token!r} {value:.2f}" for token, value in entry["neighbours"][:5])
            lines.append(f"nearest to {entry['query']!r}: {near}")
        return lines
    if kind == "saliency":
        return [f"{method}: " + "; ".join(check.get("verdicts", [])) for method, check in
                (record.get("checks") or {}).items()]
    if kind == "logit-lens":
        summary = record.get("summary") or {}
        top1 = summary.get("top1") or []
        return [f"{layer}: the next token is the lens's top token at {share:.0%} of positions"
                for layer, share in zip(record.get("layers", []), top1) if share == share]
    return []


def _section(ctx: TextReportContext, stage: str, notes: dict[str, str]) -> TextSection:
    kind, _, layer = stage.partition(":")
    record_name, title, what = VIEWS[kind]
    title = f"{title}: {layer}" if layer else title
    anchor = f"{kind}-{slug(layer)}" if layer else kind
    if stage in notes:
        return TextSection(anchor=anchor, title=title, what=what, note=notes[stage])
    folder = _stage_folder(ctx, stage)
    record = read_json(folder / record_name)
    rel = folder.relative_to(ctx.out).as_posix()
    files = [f for f in record.get("files", []) if (folder / f).is_file()]
    pages = [f for f in files if f.endswith(".html")]
    main = "index.html" if "index.html" in pages else (pages[0] if pages else None)
    picture = next((f for f in files if f.endswith(".png")), None)
    links = [(Path(f).stem, f"{rel}/{f}") for f in pages if f != main]
    return TextSection(anchor=anchor, title=title, what=what, page=f"{rel}/{main}" if main else None,
                       picture=f"{rel}/{picture}" if picture else None, links=links, facts=_facts(kind, record),
                       command=record.get("command"))


def write_index(ctx: TextReportContext) -> None:
    """``index.html``: one section per view stage, in stage order."""
    s = ctx.settings
    notes = read_notes(ctx.out)
    stages = ["graph", "attention", "embeddings", *[f"units:{layer}" for layer in s["layers"]], "saliency",
              "logit-lens"]
    summary = (f"{s['model']} ({ctx.model.kind}) over {s['n']} texts from {s['source']}: attention and the logit "
               f"lens on {min(s['attention_n'], s['n'])}, saliency ({', '.join(s['methods'])}) on "
               f"{min(s['saliency_n'], s['n'])}, {s['units_per_layer']} units of {len(s['layers'])} layer(s); seed "
               f"{s['seed']}.")
    write_text_report_page(ctx.out / "index.html", f"{s['model']} text report", summary,
                           [_section(ctx, stage, notes) for stage in stages])


__all__ = ["write_index", "VIEWS"]
