"""How long does the text report (``nnfeat report MODEL --text-file FILE``) take over 1,000 sentences, how much
memory, and what does the report itself add beyond the passes it needs?

Issue 24's number: the ``minilm`` report over 1,000 sentences (nnfeat's own grammar:
:func:`nnfeat.ops.demo.demo_sentences`, seeded), default settings: end-to-end time, peak memory (the process's
maximum resident set), per-stage seconds, and the shares of
:meth:`nnfeat.ops.text_report.TextReportResult.time_shares`:

* **views** -- the token operations' work (their passes and their own figures): graph, attention, embeddings,
  units' contexts (one pass over every sentence per layer), saliency with its numbers, logit lens;
* **report** -- the report's own work: the index page, the stage records and manifest, everything between stages.

Goal: report / total <= 10 %. For scale, the bare passes the units stages need are timed too (a forward pass over
every sentence in batches of 64 with the layers' outputs kept, once per units layer), and the units stages'
overhead beyond them is given. A second, resumed run over the finished folder must do nothing.

Run::

    .venv/bin/python experiments/bench_text_report.py               # minilm, 1,000 sentences (the text extra)
    .venv/bin/python experiments/bench_text_report.py --quick       # dates-seq2seq, 64 dates
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch


def bare_passes(model, texts: list[str], layers: list[str], batch: int = 64) -> float:
    """Seconds of one no-grad forward pass over ``texts`` per layer in ``layers``, the layer's output kept."""
    from nnfeat.ops.token_heatmap import capture_token_layer

    t0 = time.perf_counter()
    with torch.no_grad():
        for layer in layers:
            for s in range(0, len(texts), batch):
                capture_token_layer(model, layer, model.encode(texts[s:s + batch]))
    return time.perf_counter() - t0


def run(model_name: str, texts: list[str], out: Path) -> dict:
    from nnfeat.models import load_model
    from nnfeat.ops.text_report import text_report

    t0 = time.perf_counter()
    model = load_model(model_name)
    load_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    result = text_report(model, texts, out, progress=False)
    total = time.perf_counter() - t1
    shares = result.time_shares()
    t2 = time.perf_counter()
    again = text_report(model, texts, out, progress=False)
    resumed = time.perf_counter() - t2
    layers = result.settings["layers"]
    passes = bare_passes(model, texts, layers) if model.kind != "seq2seq" else None
    units = sum(v for k, v in result.timings.items() if k.startswith("units:"))
    return {"model": model_name, "texts": len(texts), "threads": torch.get_num_threads(),
            "load_seconds": round(load_s, 2), "total_seconds": round(total, 2),
            "stages": {k: round(v, 2) for k, v in result.timings.items()},
            "views_seconds": round(shares["views"], 2), "report_seconds": round(shares["report"], 2),
            "report_share": round(shares["report"] / total, 4),
            "units_seconds": round(units, 2), "units_bare_passes_seconds": None if passes is None else round(passes, 2),
            "units_beyond_passes_share": None if passes is None else round(max(0.0, units - passes) / total, 4),
            "resumed_seconds": round(resumed, 2), "resumed_stages": list(again.timings),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "notes": result.notes}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="dates-seq2seq over 64 dates")
    p.add_argument("--model", default="minilm")
    p.add_argument("--n", type=int, default=1000, help="sentences (default 1000)")
    p.add_argument("--out", default=None, help="report folder (default a temporary one)")
    p.add_argument("--json", default=None, help="also write the numbers here")
    args = p.parse_args(argv)
    from nnfeat.ops.demo import demo_dates, demo_sentences

    name = "dates-seq2seq" if args.quick else args.model
    texts = demo_dates(64) if args.quick else (demo_dates(args.n) if name == "dates-seq2seq" else
                                               demo_sentences(args.n))
    with tempfile.TemporaryDirectory() as tmp:
        row = run(name, texts, Path(args.out) if args.out else Path(tmp) / "report")
    text = json.dumps(row, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
