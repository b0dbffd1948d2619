"""Token integrated gradients, measured: nnfeat's against the bare passes it needs and against captum's
``LayerIntegratedGradients`` at several internal batch sizes, side by side in one run, one thread.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/bench_token_ig.py [--texts 64] [--tokens 128] [--steps 32]
        [--repeats 3] [--batches 64,256,512] [--mixed]

``minilm`` (all-MiniLM-L6-v2, the packaged sentence encoder) explains each text's cosine similarity with a second
text (``--pair``): 64 texts x 128 tokens, 32 path points = 2,048 forward + backward rows of 128 tokens.

* **bare**: the 2,048 rows as nnfeat batches them (``--batches``' first size), each chunk one forward with the
  embedding output replaced and one backward to it -- the least any embedding-space IG can do on the padded
  batch (``--mixed``: every row at the padded width, as a plain loop over the batch runs them);
* **nnfeat**: :func:`nnfeat.analysis.token_saliency.row_attributions` (``integrated-gradients``) at its default
  (``batch_size=None``: :func:`~nnfeat.analysis.token_saliency.rows_per_pass`, 64 rows of 128 tokens) and at each
  batch size;
* **captum**: ``LayerIntegratedGradients`` on the embedding module, ``riemann_middle``, at each
  ``internal_batch_size`` (its best is the one to beat); its attributions checked equal to nnfeat's.

Medians of ``--repeats`` interleaved runs, thread CPU time and wall time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

from bench_text import BASE, timed  # noqa: E402 - the texts and the timer of the text benchmarks
from nnfeat.analysis.token_embedding import embed, embedding_hook, make_baseline  # noqa: E402
from nnfeat.analysis.token_saliency import row_attributions, rows_per_pass  # noqa: E402
from nnfeat.analysis.token_targets import make_target  # noqa: E402
from nnfeat.models import load_model  # noqa: E402
from nnfeat.models.text import TokenBatch  # noqa: E402


def fixed_batch(model, texts: int, tokens: int, mixed: bool = False) -> TokenBatch:
    """``texts`` rows of exactly ``tokens`` tokens ([CLS] ... [SEP]); ``mixed``: row i has 8 + i * (tokens - 8) /
    (texts - 1) tokens instead, right-padded to ``tokens`` (a corpus of mixed lengths as a tokenizer pads it)."""
    batch = model.encode([f"Text number {i}. " + BASE * 8 for i in range(texts)])
    sep, pad = model.tokenizer.id_of("sep"), model.tokenizer.id_of("pad")
    ids = torch.cat([batch.ids[:, :tokens - 1], torch.full((texts, 1), sep)], 1)
    mask = torch.ones_like(ids, dtype=torch.bool)
    if mixed:
        lengths = torch.linspace(8, tokens, texts).round().long()
        columns = torch.arange(tokens)[None]
        mask = columns < lengths[:, None]
        ids = torch.where(mask, ids, torch.full_like(ids, pad))
        ids[torch.arange(texts), lengths - 1] = sep
    return TokenBatch(ids, mask, [[]] * texts, batch.texts, [0] * texts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", default="64,256,512")
    parser.add_argument("--mixed", action="store_true",
                        help="texts of 8 to --tokens tokens, padded to --tokens (default: every text --tokens long)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from captum.attr import LayerIntegratedGradients  # noqa: PLC0415 - reason: test extra, the reference

    model = load_model("minilm", device="cpu")
    batch = fixed_batch(model, args.texts, args.tokens, args.mixed)
    target = make_target(model, batch, pair="A man is eating food.")
    sizes = [int(b) for b in args.batches.split(",")]
    rows = torch.arange(target.rows)
    n = target.rows * args.steps
    emb = embed(model, target.ids)
    base = make_baseline(model, target.ids, target.mask, emb, "pad")
    base_ids = torch.where(base.keep, target.ids, torch.full_like(target.ids, model.tokenizer.id_of("pad")))

    def bare(size: int):
        def run():
            for start in range(0, n, size):  # the path points' chunks, as nnfeat batches them
                which = torch.arange(start, min(start + size, n)) % target.rows
                point = emb[which].detach().requires_grad_(True)
                with torch.enable_grad(), embedding_hook(model, point):
                    score = target.score(model, target.ids[which], target.mask[which], rows[which])
                    torch.autograd.grad(score.sum(), point)
        return run

    def ours(size: int):
        return lambda: row_attributions(model, target, "integrated-gradients", steps=args.steps, batch_size=size)

    def forward(ids, mask, which):
        return target.score(model, ids, mask, which)

    lig = LayerIntegratedGradients(forward, model.module(model.embedding))

    def theirs(size: int):
        return lambda: lig.attribute(target.ids, baselines=base_ids, additional_forward_args=(target.mask, rows),
                                     n_steps=args.steps, method="riemann_middle", internal_batch_size=size)

    runs = {("bare", sizes[0]): bare(sizes[0])}
    default = rows_per_pass(args.tokens)  # nnfeat's default rows per pass: 8,192 tokens' worth
    runs.update({("nnfeat", f"{s} (default)" if s == default else s): ours(s) for s in sizes})
    if default not in sizes:
        runs[("nnfeat", f"{default} (default)")] = ours(None)
    runs.update({("captum", s): theirs(s) for s in sizes})
    times: dict = {key: [] for key in runs}
    results: dict = {}
    for _ in range(args.repeats):  # interleaved rounds; each run's attributions kept for the comparison
        for key, fn in runs.items():
            times[key].append(timed(lambda: results.__setitem__(key, fn())))
    mine = next(v for (name, _), v in results.items() if name == "nnfeat")
    ref = next(v for (name, _), v in results.items() if name == "captum").sum(-1) * target.mask
    error = float((mine - ref).abs().max() / ref.abs().max())
    med = {k: (statistics.median(c for c, _ in v), statistics.median(w for _, w in v)) for k, v in times.items()}
    bare_cpu = med[("bare", sizes[0])][0]
    best_captum = min(med[("captum", s)][0] for s in sizes)
    shape = f"{args.texts} texts of {int(target.mask.sum(1).min())}-{args.tokens} tokens (mean " \
        f"{float(target.mask.sum(1).float().mean()):.0f}) padded to {args.tokens}" if args.mixed else \
        f"{args.texts} texts x {args.tokens} tokens"
    print(f"minilm, {shape}, {args.steps} steps ({n} rows); nnfeat vs captum max "
          f"|difference| / max |attribution| = {error:.2e}")
    print("| run | batch | CPU s (median) | wall s (median) | / bare | / captum's best |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for (name, size), (cpu, wall) in med.items():
        print(f"| {name} | {size} | {cpu:.1f} | {wall:.1f} | {cpu / bare_cpu:.2f}x | {cpu / best_captum:.2f}x |")


if __name__ == "__main__":
    main()
