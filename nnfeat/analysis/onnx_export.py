"""ONNX export for Netron and onnxruntime: :func:`export_onnx` (``nnfeat graph MODEL --onnx FILE``).

What is exported is the nnfeat :class:`~nnfeat.models.base.Model` wrapper, so the ONNX graph takes what every
nnfeat command takes: ``images`` (B, 3, H, W) RGB in [0, 1] at the model's input size (the normalization, and
the grey conversion of one-channel networks, are the first nodes of the graph), and gives the network's
output (``output``, e.g. (B, classes) logits). The batch axis is dynamic where the exporter allows it, else 1.

The exporter is ``torch.onnx.export``: ``"dynamo"`` (torch.export, the default since torch 2.9; needs the
``onnx`` and ``onnxscript`` packages: ``pip install nnfeat[onnx]``) or ``"torchscript"`` (the older tracer).
A network that cannot be exported gives a one-line :class:`NnfeatError` naming the failing operator.

A token model (:class:`~nnfeat.models.text.TokenModel`) is exported as its network called the way nnfeat calls
it (:func:`token_signature`): inputs ``ids`` (B, T) int64 and, where the network takes one, ``mask`` (B, T)
(bool; int64 for Hugging Face models, their ``attention_mask``); seq2seq: ``ids``, ``decoder_ids`` (B, T') int64
and ``mask``. The output is the network's (its first tensor for Hugging Face outputs). The batch and token
axes are dynamic where the exporter allows it, else fixed at the example text's.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from nnfeat.analysis.graph_trace import fused_attention_off
from nnfeat.errors import NnfeatError
from nnfeat.models.base import Model
from nnfeat.models.text import TokenModel

__all__ = ["export_onnx", "EXPORTERS", "failing_operator", "token_signature"]

EXPORTERS = ("dynamo", "torchscript")

_OPERATORS = (
    re.compile(r"(?:OpOverload\(op='|target=torch\.ops\.|operator ')(aten(?:\.|::)[A-Za-z0-9_]+)"),
    re.compile(r"export of operator '?([A-Za-z0-9_:.]+)"),
    re.compile(r"(aten(?:\.|::)[A-Za-z0-9_]+)"),
)


def failing_operator(err: BaseException) -> str | None:
    """The operator an exporter error names (``aten::linalg_eig``), searching the error and its causes."""
    seen = 0
    while err is not None and seen < 8:
        text = str(err)
        for pattern in _OPERATORS:
            match = pattern.search(text)
            if match:
                op = match.group(1).rstrip(".,")
                return op.replace(".", "::", 1) if op.startswith("aten.") else op
        err = err.__cause__ or err.__context__
        seen += 1
    return None


def _requirements(exporter: str) -> None:
    missing = []
    for name in ("onnx", "onnxscript") if exporter == "dynamo" else ("onnx",):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise NnfeatError(f"--onnx needs the {' and '.join(missing)} package{'s' if len(missing) > 1 else ''}: "
                          "pip install 'nnfeat[onnx]'")


def export_onnx(model: Model | TokenModel, path: str | os.PathLike, *, size: tuple[int, int] | None = None,
                exporter: str = "dynamo", opset: int | None = None, dynamic_batch: bool = True,
                text: str | None = None) -> Path:
    """Write ``model`` (an nnfeat Model or TokenModel; see the module docstring) as ONNX to ``path``; return the
    path.

    size: (H, W) of the example input (default: the model's input size). exporter: ``dynamo`` or
    ``torchscript``. opset: the ONNX opset (default: the exporter's). dynamic_batch: a symbolic batch axis
    (falls back to batch 1 if the network will not export with one); for a token model also a symbolic token
    axis. text: a token model's example text (default: a probe text of its vocabulary).
    """
    if exporter not in EXPORTERS:
        raise NnfeatError(f"unknown ONNX exporter '{exporter}'; expected one of {', '.join(EXPORTERS)}")
    _requirements(exporter)
    path = Path(path)
    if path.exists() and path.is_dir():
        raise NnfeatError(f"--onnx {path} is a folder: give a file name such as model.onnx")
    if isinstance(model, TokenModel):
        return _export_tokens(model, path, text, exporter, opset, dynamic_batch)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = tuple(size or model.input_size)
    example = torch.rand(1, 3, *size, device=model.device)
    name = getattr(model, "name", type(model).__name__)
    tmp = path.with_name(f".{path.name}.part")
    tries = [True, False] if dynamic_batch else [False]
    error: BaseException | None = None
    for dynamic in tries:
        try:
            _export(model, example, tmp, exporter, opset, dynamic)
            os.replace(tmp, path)
            return path
        except NnfeatError:
            raise
        except Exception as err:  # noqa: BLE001 - any exporter failure is reported as one line
            error = err
        finally:
            if tmp.exists():
                tmp.unlink()
    _fail(name, exporter, error)


def _fail(name: str, exporter: str, error: BaseException | None) -> None:
    op = failing_operator(error)
    first = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
    what = f"operator {op} has no ONNX conversion" if op else f"{type(error).__name__}: {first[:160]}"
    raise NnfeatError(f"cannot export {name} to ONNX ({exporter} exporter): {what}")


class _TokenCall(nn.Module):
    """A token network called the way :class:`~nnfeat.models.text.TokenModel` calls it, returning one tensor."""

    def __init__(self, net: nn.Module, call: str, seq2seq: bool) -> None:
        super().__init__()
        self.net, self.call, self.seq2seq = net, call, seq2seq

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.seq2seq:
            ids, decoder_ids, mask = inputs
            return self.net(ids, decoder_ids, mask)
        if self.call == "hf":
            out = self.net(input_ids=inputs[0], attention_mask=inputs[1])
            return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state
        return self.net(*inputs)


def token_signature(model: TokenModel, ids: torch.Tensor, mask: torch.Tensor,
                    decoder_ids: torch.Tensor | None = None) -> tuple[list[str], tuple[torch.Tensor, ...]]:
    """The ONNX input names and example tensors of ``model``'s network on (B, T) ``ids`` / bool ``mask``:
    ``ids``; ``ids, mask``; ``ids, mask`` (int64, Hugging Face); seq2seq ``ids, decoder_ids, mask``."""
    if model.kind == "seq2seq":
        return ["ids", "decoder_ids", "mask"], (ids, decoder_ids, mask)
    if model.call == "hf":
        return ["ids", "mask"], (ids, mask.long())
    if model.call == "ids_mask":
        return ["ids", "mask"], (ids, mask)
    return ["ids"], (ids,)


def _export_tokens(model: TokenModel, path: Path, text: str | None, exporter: str, opset: int | None,
                   dynamic: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # torchscript traces Python ints into reshapes (nn.MultiheadAttention's): its files are valid at the example's
    # shape only, so they are exported with fixed axes, batch 1; dynamo: symbolic axes, from a batch of 2 (an axis
    # of size 1 would be fixed to 1)
    dynamic = dynamic and exporter == "dynamo"
    example = text if text is not None else model.probe_text()
    batch = model.encode([example] * (2 if dynamic else 1))
    decoder = None
    if model.kind == "seq2seq":
        bos = (model.target_tokenizer or model.tokenizer).id_of("bos") or 0
        decoder = torch.full((len(batch), 3), bos, dtype=torch.long, device=batch.ids.device)
    names, example = token_signature(model, batch.ids, batch.mask, decoder)
    wrapper = _TokenCall(model.net, model.call, model.kind == "seq2seq").eval()
    tmp = path.with_name(f".{path.name}.part")
    error: BaseException | None = None
    for axes in ([True, False] if dynamic else [False]):
        try:
            _export_token_call(wrapper, example, names, tmp, exporter, opset, axes)
            os.replace(tmp, path)
            return path
        except NnfeatError:
            raise
        except Exception as err:  # noqa: BLE001 - any exporter failure is reported as one line
            error = err
        finally:
            if tmp.exists():
                tmp.unlink()
    _fail(model.name, exporter, error)


def _export_token_call(wrapper: nn.Module, example: tuple, names: list[str], path: Path, exporter: str,
                       opset: int | None, dynamic: bool) -> None:
    kwargs = {"input_names": names, "output_names": ["output"]}
    if opset is not None:
        kwargs["opset_version"] = opset
    if exporter == "dynamo":
        if dynamic:
            batch, tokens = torch.export.Dim("batch"), torch.export.Dim("tokens")
            kwargs["dynamic_shapes"] = ({0: batch, 1: torch.export.Dim("decoder_tokens") if n == "decoder_ids"
                                         else tokens} for n in names)
            kwargs["dynamic_shapes"] = (tuple(kwargs["dynamic_shapes"]),)
        kwargs.update(dynamo=True, verbose=False, external_data=False)
    else:
        if dynamic:
            kwargs["dynamic_axes"] = {n: {0: "batch", 1: "decoder_tokens" if n == "decoder_ids" else "tokens"}
                                      for n in names}
        kwargs.update(dynamo=False)
    with warnings.catch_warnings(), _quiet(), torch.no_grad(), fused_attention_off():  # fused ops: no ONNX form
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, example, str(path), **kwargs)


def _export(model: Model, example: torch.Tensor, path: Path, exporter: str, opset: int | None, dynamic: bool) -> None:
    kwargs = {"input_names": ["images"], "output_names": ["output"]}
    if opset is not None:
        kwargs["opset_version"] = opset
    if exporter == "dynamo":
        if dynamic:
            kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch")},)
        kwargs.update(dynamo=True, verbose=False, external_data=False)
    else:
        if dynamic:
            kwargs["dynamic_axes"] = {"images": {0: "batch"}, "output": {0: "batch"}}
        kwargs.update(dynamo=False)
    with warnings.catch_warnings(), _quiet(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), **kwargs)


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' progress lines and the IR dumps their C++ side writes to stderr on failure
    (file descriptors 1 and 2 go to a temporary file for the duration)."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as sink, contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
