"""``nnfeat demo``: the offline demo, the reports of the embedded ``digits-cnn`` and ``digits-vit`` and the text
reports of ``dates-seq2seq`` (and ``minilm`` with the text extra)."""

from __future__ import annotations

from pathlib import Path

from nnfeat.cli.common import positive
from nnfeat.ops.demo import run_demo


def register(sub) -> None:
    p = sub.add_parser("demo", help="offline demo: the reports of the embedded digits-cnn and digits-vit and the text reports of "
                                       "dates-seq2seq (and minilm with the text extra); writes OUT/index.html")
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.add_argument("--steps", type=int, default=128, help="render steps of the reports' renders, atlas icons too (default 128; the class renders take at least 256)")
    p.add_argument("--no-atlas", action="store_true", help="skip the digits activation atlas")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    positive("steps", args.steps)
    run_demo(Path(args.out), steps=args.steps, atlas=not args.no_atlas, progress=not args.quiet)
    return 0
