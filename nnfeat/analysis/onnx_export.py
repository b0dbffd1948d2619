"""ONNX export for Netron and onnxruntime: :func:`export_onnx` (``nnfeat graph MODEL --onnx FILE``).

What is exported is the nnfeat :class:`~nnfeat.models.base.Model` wrapper, so the ONNX graph takes what every
nnfeat command takes: ``images`` (B, 3, H, W) RGB in [0, 1] at the model's input size (the normalization, and
the grey conversion of one-channel networks, are the first nodes of the graph), and gives the network's
output (``output``, e.g. (B, classes) logits). The batch axis is dynamic where the exporter allows it, else 1.

The exporter is ``torch.onnx.export``: ``"dynamo"`` (torch.export, the default since torch 2.9; needs the
``onnx`` and ``onnxscript`` packages: ``pip install nnfeat[onnx]``) or ``"torchscript"`` (the older tracer).
A network that cannot be exported gives a one-line :class:`NnfeatError` naming the failing operator.
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

from nnfeat.errors import NnfeatError
from nnfeat.models.base import Model

__all__ = ["export_onnx", "EXPORTERS", "failing_operator"]

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


def export_onnx(model: Model, path: str | os.PathLike, *, size: tuple[int, int] | None = None, exporter: str = "dynamo",
                opset: int | None = None, dynamic_batch: bool = True) -> Path:
    """Write ``model`` (an nnfeat Model; see the module docstring) as ONNX to ``path``; return the path.

    size: (H, W) of the example input (default: the model's input size). exporter: ``dynamo`` or
    ``torchscript``. opset: the ONNX opset (default: the exporter's). dynamic_batch: a symbolic batch axis
    (falls back to batch 1 if the network will not export with one).
    """
    if exporter not in EXPORTERS:
        raise NnfeatError(f"unknown ONNX exporter '{exporter}'; expected one of {', '.join(EXPORTERS)}")
    _requirements(exporter)
    path = Path(path)
    if path.exists() and path.is_dir():
        raise NnfeatError(f"--onnx {path} is a folder: give a file name such as model.onnx")
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
    op = failing_operator(error)
    first = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
    what = f"operator {op} has no ONNX conversion" if op else f"{type(error).__name__}: {first[:160]}"
    raise NnfeatError(f"cannot export {name} to ONNX ({exporter} exporter): {what}")


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
