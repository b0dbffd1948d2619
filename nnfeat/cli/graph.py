"""``nnfeat graph``: a model's architecture as a zoomable offline page (and, with ``--onnx``, an ONNX file)."""

from __future__ import annotations

from nnfeat.analysis.onnx_export import export_onnx, token_signature
from nnfeat.cli.common import add_model, add_shared, check_out_file, finish, load_model, positive
from nnfeat.cli.text_options import add_texts, has_texts, texts_from_args
from nnfeat.errors import NnfeatError
from nnfeat.models.text import TokenModel
from nnfeat.ops.graph import graph
from nnfeat.ops.results import check_out_dir


def register(sub) -> None:
    p = sub.add_parser(
        "graph", help="the model's graph as a zoomable page: layer names, shapes, parameters, FLOPs; --onnx export",
        description="Trace the model (torch.fx, else forward hooks on the module tree) and write graph.html (one "
                    "node per layer with the name other commands take, its type, output shape, parameters and "
                    "FLOPs; blocks collapsible; residual and concat edges), graph.json and graph.png. A token "
                    "model is traced on one text (--text; default: a few words of its vocabulary).")
    add_model(p)
    p.add_argument("--size", type=int, default=None, help="input size (default: the model's native size)")
    p.add_argument("--onnx", default=None, metavar="FILE",
                   help="also export the model (input: RGB in [0, 1]; token models: int64 token ids and their "
                        "mask) as ONNX to FILE, e.g. for Netron (needs pip install 'nnfeat[onnx]')")
    p.add_argument("--exporter", default="dynamo", choices=("dynamo", "torchscript"),
                   help="ONNX exporter: dynamo (torch.export; default) or torchscript")
    add_texts(p)
    add_shared(p, out="out/graph", seed=False, precision=False)
    p.set_defaults(func=cmd_graph)


def cmd_graph(args) -> int:
    positive("size", args.size, 2)
    out = check_out_dir(args.out)
    if args.onnx is not None:  # the checks --out gets, before any work
        check_out_file(args.onnx, "--onnx", "model.onnx")
    model = load_model(args)
    if isinstance(model, TokenModel):
        return _token_graph(args, model, out)
    if has_texts(args):
        raise NnfeatError(f"{model.name} takes images, not text: leave out --text/--text-file (they are for token "
                          "models)")
    size = (args.size, args.size) if args.size else None
    onnx = None
    if args.onnx is not None:
        onnx = str(export_onnx(model, args.onnx, size=size, exporter=args.exporter))
    result = graph(model, size=size)
    result.onnx = onnx
    code = finish(result, args, out)
    if onnx:
        print(f"wrote {onnx} (ONNX: input images (B, 3, H, W) RGB in [0, 1])")
    return code


def _token_graph(args, model: TokenModel, out) -> int:
    if args.size is not None:
        raise NnfeatError(f"--size is for image models; {model.name} is a token model: give the text to trace "
                          "with --text")
    text = None
    if has_texts(args):
        texts = texts_from_args(args)
        if len(texts) > 1:
            raise NnfeatError(f"graph traces one text; got {len(texts)}: give one --text (or a file of one line)")
        text = texts.texts[0]
    batch = model.encode([text if text is not None else model.probe_text()])  # bad text: one line, before work
    note = batch.note(model.max_length)
    if note:
        print(f"note: {note}")
    onnx = None
    if args.onnx is not None:
        onnx = str(export_onnx(model, args.onnx, exporter=args.exporter, text=batch.texts[0]))
    result = graph(model, text=text)
    result.onnx = onnx
    code = finish(result, args, out)
    if onnx:
        names, example = token_signature(model, batch.ids, batch.mask, batch.ids)
        axes = "(B, T)" if args.exporter == "dynamo" else f"(1, {batch.ids.shape[1]}), fixed by torchscript"
        inputs = ", ".join(f"{n} {axes} {str(t.dtype).replace('torch.', '')}" for n, t in zip(names, example))
        print(f"wrote {onnx} (ONNX: inputs {inputs})")
    return code
