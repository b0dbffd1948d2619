"""A model's computation graph as data: :class:`ModelGraph` (nodes, edges, nested blocks) and the stable HTML id
of each name (:func:`node_anchor`). :func:`nnfeat.analysis.graph.model_graph` builds one; see
:mod:`nnfeat.analysis.graph` for what the nodes, edges and blocks are."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from nnfeat.errors import NnfeatError

__all__ = ["GraphNode", "GraphEdge", "GraphGroup", "ModelGraph", "node_anchor", "INPUT_ID"]

#: The id of the network input node (the normalized image the network sees).
INPUT_ID = "input"


def node_anchor(name: str) -> str:
    """The stable HTML id of a node or block: ``"node-"`` + its name with every character other than letters,
    digits, ``_`` and ``.`` written ``-XX`` (hex), e.g. ``layer1.0.conv1`` -> ``node-layer1.0.conv1``,
    ``relu#1`` -> ``node-relu-231``, ``op:add_3`` -> ``node-op-3aadd_3`` (one name, one id)."""
    return "node-" + re.sub(r"[^A-Za-z0-9_.]", lambda m: "".join(f"-{b:02x}" for b in m.group().encode()), name)


@dataclass
class GraphNode:
    """One drawn node. ``id``: unique (the layer reference for modules, ``op:NAME`` for functions,
    ``input``); ``layer``: the nnfeat layer reference or None; ``kind``: input, module, op or output;
    ``type``: module class or function name; ``group``: the enclosing block ("" at the top);
    ``shape``: output shape with the batch axis (1, ...), None if not a tensor."""

    id: str
    layer: str | None
    kind: str
    type: str
    group: str
    shape: list[int] | None
    params: int = 0
    flops: int = 0


@dataclass
class GraphEdge:
    """Data flows from node ``source`` to node ``target``; ``kind``: data, residual or concat."""

    source: str
    target: str
    kind: str = "data"


@dataclass
class GraphGroup:
    """A block: a module with children (``name`` is its dotted name and a layer reference), ``parent`` its
    enclosing block ("" at the top), ``shape`` its output shape (first call), ``params`` / ``flops`` its
    totals, ``nodes`` the ids of the nodes directly in it and ``groups`` its direct sub-blocks."""

    name: str
    type: str
    parent: str
    shape: list[int] | None
    params: int = 0
    flops: int = 0
    nodes: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)


@dataclass
class ModelGraph:
    """A network's graph (see the module docstring)."""

    model: str
    method: str
    input_shape: list[int]
    nodes: list[GraphNode]
    edges: list[GraphEdge]
    groups: list[GraphGroup]
    total_params: int = 0
    #: leaf modules that exist but are not called at this input (e.g. GoogLeNet's auxiliary heads in eval mode)
    unused: list[str] = field(default_factory=list)

    def node(self, id: str) -> GraphNode:
        for n in self.nodes:
            if n.id == id:
                return n
        raise NnfeatError(f"no node '{id}' in the graph of {self.model}")

    def layer_names(self) -> list[str]:
        """The nnfeat layer references of the module nodes and blocks, in graph order then block order."""
        return [n.layer for n in self.nodes if n.layer] + [g.name for g in self.groups]

    def residual_additions(self) -> list[GraphNode]:
        """The ``add`` nodes that sum two tensors of the graph (a residual connection each)."""
        return [n for n in self.nodes if any(e.target == n.id and e.kind == "residual" for e in self.edges)]

    @property
    def total_flops(self) -> int:
        return sum(n.flops for n in self.nodes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: model, method, input_shape, totals, nodes, edges, groups (each with its ``anchor``)."""
        nodes = [{**asdict(n), "anchor": node_anchor(n.id)} for n in self.nodes]
        groups = [{**asdict(g), "anchor": node_anchor(g.name)} for g in self.groups]
        return {"model": self.model, "method": self.method, "input_shape": self.input_shape,
                "total_params": self.total_params, "total_flops": self.total_flops, "nodes": nodes,
                "edges": [asdict(e) for e in self.edges], "groups": groups, "unused": self.unused}
