"""The architecture page: :func:`graph` -> :class:`GraphResult` (kind ``graph``): ``graph.html``, ``graph.json``
and ``graph.png``.

``graph.html`` is one self-contained, offline page (``templates/graph.html`` with ``graph.css`` and ``graph.js``;
the graph is inline JSON, the script is allowed by its SHA-256 hash in the Content-Security-Policy, nothing is
fetched). It lays the graph out itself (layered, top to bottom: :func:`nnfeat.analysis.graph.layered_layout`,
ported to the page's script) and draws it as SVG: wheel to zoom about the cursor, drag to pan; each block
(``layer1``, ``layer1.0``...) is a box whose header collapses it into one node, and a collapsed block expands
on click; residual edges are drawn in orange, concat edges in blue. Clicking a node shows its name, type,
output shape, parameters and FLOPs in the side panel (hovering gives the same as a tooltip).

Stable hooks (for tests, scripting and ``nnfeat report`` links): each drawn node or block is an SVG ``g`` with
``id`` = :func:`~nnfeat.analysis.graph.node_anchor` of its name and ``data-name`` = the name; opening
``graph.html#<anchor>`` expands the blocks around that node, selects and centres it. ``#summary`` gives the
counts, ``#visible-count`` the nodes on screen, ``#panel`` the selected node (``#panel-name``, ``#panel-type``,
``#panel-shape``, ``#panel-params``, ``#panel-flops``); ``#expand-all``, ``#collapse-all``, ``#reset-view``;
``window.nnfeatGraph`` (``ready``, ``visibleCount()``, ``toggle(block)``, ``expandAll()``, ``collapseAll()``,
``select(name)``, ``centre(name)``, ``collapsed()``).

``graph.png`` is an overview drawn with PIL: the graph with blocks collapsed as deep as needed to keep it
readable (at most :data:`PNG_MAX_NODES` nodes). The page and the overview are drawn by
:mod:`nnfeat.views.graph_page` (its names are re-exported here); the graph is :mod:`nnfeat.analysis.graph`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from nnfeat.analysis.graph import ModelGraph, model_graph
from nnfeat.analysis.graph_trace import TraceInputs, fused_attention_off, token_inputs
from nnfeat.analysis.onnx_export import export_onnx
from nnfeat.errors import NnfeatError
from nnfeat.io import write_text
from nnfeat.models.base import Model, as_model
from nnfeat.models.text import TokenModel
from nnfeat.ops.results import Result, cli_command, weights_flag
from nnfeat.views.graph_page import (PAGE_MAX_NODES, PAGE_NAME, PNG_MAX_NODES, graph_csp,  # noqa: F401
                                     graph_page, human, initial_collapsed, overview)

__all__ = ["GraphResult", "graph", "graph_csp", "initial_collapsed", "human", "PAGE_NAME", "PNG_MAX_NODES"]


@dataclass(repr=False)
class GraphResult(Result):
    """What :func:`graph` returns: ``graph`` the :class:`~nnfeat.analysis.graph.ModelGraph`; ``onnx`` the path
    of an exported ONNX file or None."""

    graph: ModelGraph
    device: str = "cpu"
    onnx: str | None = None
    elapsed: float = 0.0
    command: str | None = None
    #: {node or block name: URL}: the side panel of a selected node links there (``nnfeat report``'s layer pages)
    links: dict | None = None
    kind: ClassVar[str] = "graph"

    def title(self) -> str:
        g = self.graph
        return (f"{g.model}  {len(g.nodes)} nodes  {len(g.groups)} blocks  {g.total_params:,} parameters  "
                f"{human(g.total_flops, 'FLOPs')}  ({g.method})")

    def sheet(self) -> np.ndarray:
        if not hasattr(self, "_sheet"):
            self._sheet = overview(self.graph, self.title())
        return self._sheet

    @property
    def images(self) -> torch.Tensor:
        return torch.from_numpy(self.sheet().copy()).permute(2, 0, 1).unsqueeze(0).float() / 255

    def record(self) -> dict:
        return {**self.graph.to_dict(), "device": self.device, "onnx": self.onnx,
                "residual_additions": len(self.graph.residual_additions())}

    def page(self) -> str:
        """The whole HTML document of ``graph.html``."""
        return graph_page(self.graph, command=self.command, links=self.links)

    def write_files(self, out: Path) -> list[str]:
        write_text(out / PAGE_NAME, self.page())
        return [PAGE_NAME]


def graph(model: Model | TokenModel, *, size: tuple[int, int] | None = None, method: str = "auto",
          onnx: str | None = None, links: dict | None = None, text: str | None = None) -> GraphResult:
    """The architecture of ``model`` (an nnfeat Model) at input ``size`` (default native): its graph
    (:func:`~nnfeat.analysis.graph.model_graph`) and, with ``onnx`` (a file path), an ONNX export of the
    wrapper (input: (B, 3, H, W) RGB in [0, 1], like every nnfeat command) written there. ``links``
    ({layer name: URL}): the side panel of a selected layer links to its URL (``#panel-report-link``).

    A token model (:class:`~nnfeat.models.text.TokenModel`) is traced on ``text`` (default: a probe text of
    its vocabulary) as (1, T) int64 ids (with its mask where the network takes one; seq2seq: with its decoder
    side starting with bos); its ONNX file takes ``ids`` (B, T) int64 and ``mask`` (B, T)."""
    if isinstance(model, TokenModel):
        return _token_graph(model, method=method, onnx=onnx, links=links, text=text)
    if text is not None:
        raise NnfeatError(f"{getattr(model, 'name', type(model).__name__)} takes images, not text: leave text out "
                          "(it is for token models)")
    started = time.perf_counter()
    model = as_model(model)
    if onnx is not None:
        onnx = str(export_onnx(model, onnx, size=size))
    g = model_graph(model, size, method=method)
    command = cli_command("graph", model.name, onnx=onnx,
                          weights=weights_flag(model))
    return GraphResult(graph=g, device=str(model.device), onnx=onnx, elapsed=time.perf_counter() - started,
                       command=command, links=links)


class _TracedTokens:
    """A token model as :func:`~nnfeat.analysis.graph.model_graph` reads a model: its network, name and device,
    and a ``preprocess`` that gives the token call's :class:`TraceInputs` in place of an image."""

    def __init__(self, model: TokenModel, inputs: TraceInputs) -> None:
        self.net, self.name, self.device, self.inputs = model.net, model.name, model.device, inputs
        self.input_size = tuple(inputs.first.shape)

    def preprocess(self, _images: torch.Tensor) -> TraceInputs:
        return self.inputs


def _token_graph(model: TokenModel, *, method: str, onnx: str | None, links: dict | None, text: str | None
                 ) -> GraphResult:
    started = time.perf_counter()
    batch = model.encode([text if text is not None else model.probe_text()])
    decoder = None
    if model.kind == "seq2seq":
        bos = (model.target_tokenizer or model.tokenizer).id_of("bos") or 0
        decoder = torch.full((1, 4), bos, dtype=torch.long, device=batch.ids.device)
    inputs = token_inputs(model, batch.ids, batch.mask, decoder)
    try:  # a network that does not run on its own tokens fails here, in one line, before any tracing
        with torch.no_grad():
            model.forward(batch.ids, batch.mask, decoder)
    except NnfeatError:
        raise
    except Exception as err:  # noqa: BLE001 - the user's network: any failure is reported as one line
        reason = " ".join(str(err).split())[:160]
        raise NnfeatError(f"{model.name} does not run on the (1, {batch.ids.shape[1]}) ids of its tokens "
                          f"({type(err).__name__}: {reason})") from None
    if onnx is not None:
        onnx = str(export_onnx(model, onnx, text=batch.texts[0]))
    with fused_attention_off():
        g = model_graph(_TracedTokens(model, inputs), method=method)
    g.input_shape = [int(s) for s in batch.ids.shape]
    command = cli_command("graph", model.name, text=text, onnx=onnx, weights=weights_flag(model))
    return GraphResult(graph=g, device=str(model.device), onnx=onnx, elapsed=time.perf_counter() - started,
                       command=command, links=links)
