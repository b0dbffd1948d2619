"""Text models, measured: attention capture against the bare passes, the 512-token head view in Chromium, and the
training time of the embedded text models. One thread, the same run for every row of a table.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/bench_text.py [--repeats 5] [--skip-training]

1. ``minilm`` on 64 texts x 128 tokens: the bare eager forward (weights formed and dropped), the eager capture
   (one eager pass with ``output_attentions=True``, the route nnfeat took before), nnfeat's capture
   (:func:`nnfeat.analysis.token_capture.capture_token_attention` on the model as ``load_model`` gives it: the
   model's SDPA calls, each returning weights @ values from the weights computed from its own queries, keys and
   mask), and transformers'
   default SDPA forward (fused kernels: no weights are formed, the pass a user runs when they do not look at
   attention). Median of ``--repeats`` interleaved runs, thread CPU time (less sensitive to other processes on a
   shared machine) and wall time.
2. The head view of ``minilm`` at 512 tokens (6 layers x 12 heads): the page's size, and its load time in
   headless Chromium (the page's own ``loadMs`` and the browser's navigation timing); bertviz's head view fails
   or crawls at a few hundred tokens.
3. ``dates-seq2seq`` and ``tiny-lm`` trained from scratch in a fresh ``NNFEAT_HOME`` (goal: under 60 s each).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nnfeat.analysis.token_capture import capture_token_attention  # noqa: E402
from nnfeat.models import load_model  # noqa: E402
from nnfeat.models.hf import minilm_path  # noqa: E402
from nnfeat.models.text import TokenBatch  # noqa: E402
from nnfeat.views.head_view import head_view_html  # noqa: E402

BASE = ("The quick brown fox jumps over the lazy dog while the king spoke to the queen about the stock market and "
        "a man is eating food in a small kitchen near the river ")


def timed(fn) -> tuple[float, float]:
    cpu, wall = time.thread_time(), time.perf_counter()
    fn()
    return time.thread_time() - cpu, time.perf_counter() - wall


def capture_table(repeats: int) -> list[str]:
    import transformers  # noqa: PLC0415 - reason: optional extra (nnfeat[text])

    model = load_model("minilm", device="cpu")  # SDPA attention: what every nnfeat pass runs
    eager = load_model("minilm", device="cpu")
    eager.net.set_attn_implementation("eager")
    sdpa = transformers.AutoModel.from_pretrained(str(minilm_path()), local_files_only=True).eval()
    batch = model.encode([f"Text number {i}. " + BASE * 4 for i in range(64)])
    sep = model.tokenizer.id_of("sep")
    ids = torch.cat([batch.ids[:, :127], torch.full((64, 1), sep)], 1)
    mask = torch.ones_like(ids, dtype=torch.bool)
    fixed = TokenBatch(ids, mask, [[]] * 64, batch.texts, [0] * 64)

    def bare():
        with torch.no_grad():
            eager.net(input_ids=ids, attention_mask=mask.long())

    def fused():
        with torch.no_grad():
            sdpa(input_ids=ids, attention_mask=mask.long())

    runs = {"bare eager forward": bare,
            "eager capture (output_attentions=True)": lambda: capture_token_attention(eager, fixed),
            "nnfeat capture (weights, then weights @ values)": lambda: capture_token_attention(model, fixed),
            "transformers SDPA forward (no weights)": fused}
    for fn in runs.values():
        fn()  # warm-up
    cpu = {k: [] for k in runs}
    wall = {k: [] for k in runs}
    for _ in range(repeats):  # interleaved, so load on the machine hits every row alike
        for name, fn in runs.items():
            c, w = timed(fn)
            cpu[name].append(c)
            wall[name].append(w)
    base_cpu = statistics.median(cpu["bare eager forward"])
    sdpa_cpu = statistics.median(cpu["transformers SDPA forward (no weights)"])
    lines = ["| minilm, 64 texts x 128 tokens | CPU s (median) | wall s (median) | / bare eager | / SDPA |",
             "| --- | --- | --- | --- | --- |"]
    for name in runs:
        c, w = statistics.median(cpu[name]), statistics.median(wall[name])
        lines.append(f"| {name} | {c:.2f} | {w:.2f} | {c / base_cpu:.2f}x | {c / sdpa_cpu:.2f}x |")
    return lines


def head_view_table() -> list[str]:
    sys.path.insert(0, str(ROOT / "tests"))
    from browser import file_url, headless_chromium  # noqa: PLC0415 - reason: the tests' browser helper

    model = load_model("minilm", device="cpu")
    text = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split()[:600])
    batch = model.encode([text])
    weights = capture_token_attention(model, batch)
    stack = torch.stack([w[0] for w in weights.values()])
    tokens = batch.tokens[0]
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "head-view.html"
        start = time.perf_counter()
        head_view_html(stack, tokens, tokens, page, layer_names=list(weights), title="minilm at 512 tokens")
        write_s = time.perf_counter() - start
        size = page.stat().st_size
        with headless_chromium() as driver:
            start = time.perf_counter()
            driver.get(file_url(page))
            ready = driver.execute_script("return !!(window.headView && window.headView.ready);")
            load_s = time.perf_counter() - start
            script_ms = driver.execute_script("return window.headView.loadMs;")
            errors = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
            requests = driver.execute_script("return performance.getEntriesByType('resource').length;")
    return ["| head view, minilm, 512 tokens, 6 layers x 12 heads | value |", "| --- | --- |",
            f"| tokens | {len(tokens)} |", f"| page size | {size / 1e6:.2f} MB |", f"| written in | {write_s:.2f} s |",
            f"| loaded in headless Chromium (get() returns) | {load_s:.2f} s |",
            f"| the page's own script | {script_ms:.0f} ms |",
            f"| ready, console errors, network requests | {ready}, {len(errors)}, {requests} |"]


def training_table() -> list[str]:
    lines = ["| embedded model, trained from scratch, 1 thread | seconds (wall) | CPU seconds |", "| --- | --- | --- |"]
    for name in ("dates-seq2seq", "tiny-lm"):
        with tempfile.TemporaryDirectory() as home:
            env = {**os.environ, "NNFEAT_HOME": home, "OMP_NUM_THREADS": "1", "NNFEAT_WEIGHTS_PATH": ""}
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", f"from nnfeat.models import load_model; load_model({name!r}, "
                                                  "device='cpu')"], cwd=ROOT, env=env, check=True)
            wall = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
            lines.append(f"| {name} | {wall:.1f} | {cpu:.1f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    tables = [capture_table(args.repeats), head_view_table()]
    if not args.skip_training:
        tables.append(training_table())
    for table in tables:
        print("\n".join(table), end="\n\n", flush=True)


if __name__ == "__main__":
    main()
