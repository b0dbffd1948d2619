"""The saliency figures and page, drawn from plain data: (B, 3, H, W) images, per method a
:class:`~nnfeat.analysis.sanity.MethodMaps` (maps, display scale, sanity numbers) and the random map's
:class:`~nnfeat.analysis.sanity.CausalScores`.

Colour: each method's maps are divided by their display scale (the p99 |map|); then one colour scale holds for the
whole figure: 0..1 viridis-like for the absolute view, -1..1 blue-white-red for the signed view (one-signed
methods use only its red half). The page (``index.html``, no script) has stable hooks ``#methods``,
``section.method[data-method][data-verdict]`` (the method's status), ``.numbers td.num`` and ``.verdict`` (each
check named as passed, failed or not run: the same words as the terminal's :func:`numbers_table` and the record).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence
from urllib.parse import quote

import numpy as np
import torch
from PIL import Image, ImageDraw

from nnfeat.analysis.heatmap import COLORMAPS, overlay
from nnfeat.analysis.saliency import DISPLAY_PERCENTILE, MethodMaps
from nnfeat.analysis.sanity import CausalScores, RandomizationResult
from nnfeat.io import write_text
from nnfeat.views.sheets import _font, labelled_sheet
from nnfeat.views.templating import CSP_RELATIVE, fill_page, fill_template


def fmt(x: float | None, digits: int = 3) -> str:
    """A number for a caption or table (an em dash for None / NaN)."""
    return "\u2014" if x is None or x != x else f"{x:.{digits}f}"


def slug(method: str) -> str:
    """A file-name form of a method name: ``gradcam++`` -> ``gradcampp``."""
    return method.replace("+", "p")


# -- pictures ---------------------------------------------------------------------------------------------
def overlays(inputs: torch.Tensor, methods: Sequence[MethodMaps], alpha: float, view: str = "abs") -> torch.Tensor:
    """(B, M, 3, H, W): every method's maps over the (B, 3, H, W) images, absolute (viridis 0..1) or signed
    (-1..1)."""
    maps = torch.stack([m.normalized for m in methods], 1)  # (B, M, H, W)
    if view == "abs":
        return overlay(inputs, maps.abs(), 0.0, 1.0, "viridis", alpha)
    return overlay(inputs, maps, -1.0, 1.0, "signed", alpha)


def image_caption(index: int | str, target_mode: str, target_name: str, label: str | None,
                  target_text: str | None = None) -> str:
    """The caption of an input image: its index (or its name as it is) and the class explained (and its label where
    that differs); ``target_text``: a target other than a class logit (``out:3@mask``) as a third line."""
    return (index if isinstance(index, str) else f"image {index}") + f"\n{target_mode} {target_name}" + \
        (f" (label {label})" if label is not None and label != target_name else "") + \
        (f"\ntarget {target_text}" if target_text else "")


def map_caption(m: MethodMaps, i: int, random: CausalScores | None) -> str:
    """The caption of image ``i``'s map of method ``m``: the name and, with sanity numbers, deletion / insertion
    beside the random map's and the randomization verdict."""
    lines = [m.method]
    if m.causal is not None and random is not None:
        lines.append(f"del {fmt(float(m.causal.deletion[i]), 2)} rnd {fmt(float(random.deletion[i]), 2)}")
        lines.append(f"ins {fmt(float(m.causal.insertion[i]), 2)} rnd {fmt(float(random.insertion[i]), 2)}")
    if m.randomization is not None:
        lines.append(f"rand {'FAILS' if not m.randomization.passes else 'ok'} "
                     f"{fmt(m.randomization.final_median, 2)}")
    return "\n".join(lines)


def colorbar(width: int, view: str) -> np.ndarray:
    """(40, max(width, 320), 3) uint8: the figure's colour scale (``abs`` or ``signed``) with its meaning."""
    font = _font()
    bar = Image.new("RGB", (max(width, 320), 40), (255, 255, 255))
    draw = ImageDraw.Draw(bar)
    name = "viridis" if view == "abs" else "signed"
    table = (COLORMAPS[name].numpy() * 255).astype(np.uint8)
    x0, x1 = 40, bar.width - 40
    bar.paste(Image.fromarray(np.repeat(table[np.linspace(0, len(table) - 1, x1 - x0).astype(int)][None], 12, 0)),
              (x0, 4))
    lo, hi = ("0", "1") if view == "abs" else ("-1", "+1")
    note = (f"one scale for the figure: |map| / its method's p{DISPLAY_PERCENTILE:g} |map|" if view == "abs" else
            f"one scale for the figure: map / its method's p{DISPLAY_PERCENTILE:g} |map|, symmetric around 0")
    draw.text((4, 4), lo, fill=(40, 40, 40), font=font)
    draw.text((x1 + 4, 4), hi, fill=(40, 40, 40), font=font)
    draw.text((x0, 20), note, fill=(40, 40, 40), font=font)
    return np.asarray(bar)


def view_sheet(inputs: torch.Tensor, over: torch.Tensor, captions: Sequence[str], title: str,
               view: str = "abs") -> np.ndarray:
    """The figure of one view: per image a row (the image, then every method's (B, M, 3, H, W) overlay ``over``),
    captioned, titled, with the colour bar below. (H, W, 3) uint8."""
    tiles = torch.cat([inputs.unsqueeze(1).cpu(), over.cpu()], 1).flatten(0, 1)
    title = title + ("  (signed)" if view == "signed" else "  (absolute)")
    grid = labelled_sheet(tiles, captions, ncol=over.shape[1] + 1, title=title)
    bar = colorbar(grid.shape[1], view)
    if bar.shape[1] > grid.shape[1]:
        grid = np.pad(grid, ((0, 0), (0, bar.shape[1] - grid.shape[1]), (0, 0)), constant_values=255)
    return np.concatenate([grid, bar], 0)


def method_sheet(tiles: torch.Tensor, captions: Sequence[str]) -> np.ndarray:
    """One method's (B, 3, H, W) overlays as a captioned sheet, at most 8 to a row."""
    return labelled_sheet(tiles, captions, ncol=min(8, len(tiles)))


# -- the page ---------------------------------------------------------------------------------------------
def cascade_svg(r: RandomizationResult, width: int = 260, height: int = 110) -> str:
    """An inline SVG: median Spearman vs cascade depth k, with the threshold line (no script, CSP-safe)."""
    n = max(1, len(r.layers))
    pad = 24

    def xy(k: int, v: float) -> tuple[float, float]:
        v = 0.0 if v != v else max(-1.0, min(1.0, v))
        return pad + (width - 2 * pad) * (k / n), (height - pad) - (height - 2 * pad) * (v + 1) / 2

    pts = [xy(0, 1.0)] + [xy(k, float(v)) for k, v in zip(r.depths, r.medians.tolist())]
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
    _, ty = xy(0, r.threshold)
    _, zy = xy(0, 0.0)
    return (f'<svg class="cascade" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
            f'aria-label="median Spearman vs randomized layers">'
            f'<line x1="{pad}" x2="{width - pad}" y1="{zy:.1f}" y2="{zy:.1f}" class="axis"/>'
            f'<line x1="{pad}" x2="{width - pad}" y1="{ty:.1f}" y2="{ty:.1f}" class="threshold"/>'
            f'<polyline points="{line}" class="curve"/>'
            f'<text x="{pad}" y="12">median Spearman |map| (1 at k=0)</text>'
            f'<text x="{width - pad}" y="{height - 6}" text-anchor="end">k = {n} layers re-initialized</text>'
            f'<text x="{width - pad}" y="{ty - 3:.1f}" text-anchor="end">{r.threshold:g}</text></svg>')


def _numbers_rows(m: MethodMaps, random: CausalScores | None) -> list[str]:
    rows = []
    checks = {c.name: c for c in m.checks}
    if m.causal is not None and random is not None:
        for key, better in (("deletion", "lower"), ("insertion", "higher")):
            c = checks[key]
            mine, chance = fmt(float(getattr(m.causal, key).mean())), fmt(float(getattr(random, key).mean()))
            rows.append(f'<tr><th>{key} AUC ({better} is better)</th><td class="num" data-key="{key}">{mine}</td>'
                        f'<td class="num" data-key="random-{key}">{chance}</td>'
                        f'<td class="{"good" if c.outcome == "passes" else "bad"}">'
                        f'{html.escape(c.text.split(": ", 1)[1])}</td></tr>')
    if m.randomization is not None:
        r, c = m.randomization, checks["randomization"]
        rows.append(f'<tr><th>randomization: median Spearman after all {len(r.layers)} layers</th>'
                    f'<td class="num" data-key="spearman">{fmt(r.final_median)}</td><td>threshold {r.threshold:g}</td>'
                    f'<td class="{"good" if r.passes else "bad"}">{html.escape(c.text.split(": ", 1)[1])}</td></tr>')
    return rows


def verdict_line(m: MethodMaps) -> str:
    """The method's verdict as a paragraph: every check named, failed ones marked (the record's words)."""
    kind = {"passes": "good", "fails": "bad", "not run": "untested"}
    parts = "; ".join(f'<span class="{kind[c.outcome]}" data-check="{c.name}">{html.escape(c.text)}</span>'
                      for c in m.checks)
    return f'<p class="verdict" data-status="{m.status}">verdict: {parts}</p>'


def method_section(m: MethodMaps, random: CausalScores | None) -> str:
    """The page's section of one method: its verdict, its numbers beside the random map's, the cascade curve, both
    views."""
    name = html.escape(m.method)
    rows = _numbers_rows(m, random)
    table = ('<table class="numbers"><tr><th></th><th>method</th><th>random map</th><th></th></tr>'
             + "".join(rows) + "</table>") if rows else '<p class="note">no numbers (run without --no-numbers)</p>'
    layer = f' <span class="layer">layer {html.escape(m.layer)}</span>' if m.layer else ""
    svg = cascade_svg(m.randomization) if m.randomization is not None else ""
    failed = [c.name for c in m.checks if c.outcome == "fails"]
    flag = f' <span class="flag">fails {html.escape(", ".join(failed))}</span>' if failed else ""
    return fill_template("saliency_method.html", method=name, verdict=m.status, layer=layer, flag=flag, table=table,
                         svg=svg, base=quote(slug(m.method)), verdict_line=verdict_line(m))


def numbers_table(methods: Sequence[MethodMaps], random: CausalScores | None) -> str:
    """The terminal's table, one row per method: deletion AUC, insertion AUC, the random map's (both) and the
    verdict (the words of the record and the page)."""
    head = ("method", "deletion AUC (lower better)", "insertion AUC (higher better)", "random map's (del / ins)",
            "verdict")
    rows = [head]
    for m in methods:
        d = i = "\u2014"
        if m.causal is not None:
            d, i = fmt(float(m.causal.deletion.mean())), fmt(float(m.causal.insertion.mean()))
        chance = "\u2014" if random is None else \
            f"{fmt(float(random.deletion.mean()))} / {fmt(float(random.insertion.mean()))}"
        rows.append((m.method, d, i, chance, m.verdict))
    widths = [max(len(r[k]) for r in rows) for k in range(4)]
    return "\n".join("  ".join([r[0].ljust(widths[0])] + [r[k].rjust(widths[k]) for k in (1, 2, 3)] + [r[4]])
                     for r in rows)


def write_page(path, *, title: str, methods: Sequence[MethodMaps], random: CausalScores | None, n_images: int,
               source: str, target_mode: str, target_name: str, settings: dict, sheet: str,
               target_description: str | None = None) -> Path:
    """Write the saliency page (images linked relatively, no script) and return its path. ``target_name``: the
    explained class when ``target_mode`` is ``class``; ``target_description``: in words, a target other than a
    class logit (``class 3 of output part 'out' summed over its predicted mask ...``); ``settings``: the
    operation's (``sanity``, ``deletion_baseline``, ``steps``, ``seed``)."""
    s = settings
    bits = [f"{n_images} images from {html.escape(source)}",
            "explaining " + (html.escape(target_description) if target_description else
                             "each image's predicted class" if target_mode == "pred"
                             else f"class {html.escape(target_name)}")]
    tracked = ("softmax probability of the target" if not target_description else
               "the target's score (its class's softmax probability averaged over its region; a value as it is)")
    if random is not None:
        bits.append(f"deletion baseline: {html.escape(str(s.get('deletion_baseline')))} (sigma "
                    f"{random.insertion_sigma:g} px), insertion from that blurred copy, {s.get('steps')} steps "
                    f"of "
                    f"{random.patch}x{random.patch} px regions, "
                    f"{tracked}; random map: uniform noise, seed {s.get('seed')}")
    scale = (f"colour: one scale per figure, each method's maps divided by their p{DISPLAY_PERCENTILE:g} |map|; "
             "absolute view 0..1 (viridis), signed view -1..1 (blue-white-red)")
    document = fill_page("saliency.html", title=title, css="saliency.css", csp=CSP_RELATIVE,
                         summary=" &middot; ".join(bits), scale=html.escape(scale), sheet=quote(sheet),
                         methods="".join(method_section(m, random) for m in methods))
    return write_text(path, document)


__all__ = ["fmt", "slug", "overlays", "image_caption", "map_caption", "colorbar", "view_sheet", "method_sheet",
           "cascade_svg", "verdict_line", "method_section", "numbers_table", "write_page"]
