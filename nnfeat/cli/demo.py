"""``nnfeat demo``: the offline demo on the embedded ``digits-cnn``."""

from __future__ import annotations

from pathlib import Path

from nnfeat.cli.common import positive


def register(sub) -> None:
    p = sub.add_parser("demo", help="offline demo on the embedded digits-cnn; writes OUT/index.html")
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.add_argument("--steps", type=int, default=256, help="render steps of every render, atlas icons too (default 256)")
    p.add_argument("--no-atlas", action="store_true", help="skip the digits activation atlas")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from nnfeat.demo import run_demo

    positive("steps", args.steps)
    run_demo(Path(args.out), steps=args.steps, atlas=not args.no_atlas, progress=not args.quiet)
    return 0
