"""A model's computation graph as data: a network in, nodes / edges / nested blocks out (no drawing here).

:func:`model_graph` traces the network an nnfeat :class:`~nnfeat.models.base.Model` wraps (``model.net``):

* with ``torch.fx`` where it traces (``method == "fx"``): one node per call of a leaf module (a module
  without children, or one torch.nn treats as a leaf such as ``nn.MultiheadAttention``) and one per tensor
  function (``add``, ``cat``, ``flatten``...); edges are the real data flow;
* else with forward hooks on the module tree (``method == "hooks"``): one node per leaf-module call; an
  edge joins the module that produced a tensor to each module that takes it (tensors made by plain functions
  in between are attributed to the module called just before).

Every node carries its output shape (batch of 1, at the model's input size), its parameter count and its
FLOPs as :mod:`torch.utils.flop_counter` counts them (a multiply-add is 2 FLOPs; element-wise ops such as
ReLU, BatchNorm in eval or ``add`` count 0). Module nodes are named by their nnfeat layer reference: the
dotted module name (``layer1.0.conv1``), ``name#k`` for the k-th call of a module called several times
(:mod:`nnfeat.layouts`), ``output`` for the network output; every such name is accepted by every nnfeat
command. Function nodes are ``op:<fx name>`` (not layers). Blocks (:class:`GraphGroup`) are the modules
with children, nested by their dotted names (``layer1`` > ``layer1.0`` > ``layer1.0.conv1``); a block's
name is a layer too (its output). ``unused`` lists the leaf modules the forward pass never reaches (GoogLeNet's
auxiliary heads in eval mode), so node parameters plus theirs add up to the network's.

Edges into an ``add`` of two tensors are residual (the one that skips over more nodes is ``kind="residual"``),
edges into ``cat`` are ``kind="concat"``.

:func:`layered_layout` is the layout both the PNG overview and the page use: longest-path layering
(Sugiyama et al. 1981), dummy nodes on long edges, a few barycenter ordering sweeps.
:func:`node_anchor` gives each name a stable HTML id.

The parts: the data classes are :mod:`~nnfeat.analysis.graph_types`, the tracing
:mod:`~nnfeat.analysis.graph_trace`, the layout :mod:`~nnfeat.analysis.graph_layout` (their public names are
re-exported here).
"""

from __future__ import annotations

import torch

from nnfeat.analysis.graph_layout import collapse, layered_layout, longest_path_ranks
from nnfeat.analysis.graph_trace import fx_graph, group_shapes, hook_graph, own_params, parent_name
from nnfeat.analysis.graph_types import INPUT_ID, GraphEdge, GraphGroup, GraphNode, ModelGraph, node_anchor
from nnfeat.errors import NnfeatError
from nnfeat.models.base import Model

__all__ = ["GraphNode", "GraphEdge", "GraphGroup", "ModelGraph", "model_graph", "node_anchor", "layered_layout",
           "collapse", "INPUT_ID"]

_ADD_NAMES = {"add", "iadd", "add_"}
_CAT_NAMES = {"cat", "concat", "concatenate"}


def _edge_kinds(nodes: list[GraphNode], raw: list[tuple[str, str]]) -> list[GraphEdge]:
    """Raw edges with their kinds: into ``cat`` -> concat; into an ``add`` of two graph tensors, the incoming
    edge that skips over the most nodes (longest-path rank difference) -> residual."""
    rank = longest_path_ranks([n.id for n in nodes], raw)
    by_id = {n.id: n for n in nodes}
    incoming: dict[str, list[int]] = {}
    for i, (_, t) in enumerate(raw):
        incoming.setdefault(t, []).append(i)
    kinds = ["data"] * len(raw)
    for target, idx in incoming.items():
        node = by_id[target]
        name = node.type.lower()
        if node.kind == "op" and name in _CAT_NAMES:
            for i in idx:
                kinds[i] = "concat"
        elif name in _ADD_NAMES and len(idx) >= 2:
            spans = [rank[target] - rank[raw[i][0]] for i in idx]
            kinds[idx[max(range(len(idx)), key=lambda j: (spans[j], j))]] = "residual"
    return [GraphEdge(s, t, k) for (s, t), k in zip(raw, kinds)]


@torch.no_grad()
def model_graph(model: Model, size: tuple[int, int] | None = None, *, method: str = "auto") -> ModelGraph:
    """The graph of ``model`` (an nnfeat Model; wrap a bare ``nn.Module`` taking (B, 3, H, W) with
    :func:`nnfeat.models.base.as_model`) on one image of ``size`` (default: the model's input size). ``method``:
    ``auto`` (fx, else hooks), ``fx`` or ``hooks``."""
    if method not in ("auto", "fx", "hooks"):
        raise NnfeatError(f"unknown graph method '{method}'; expected auto, fx or hooks")
    net = model.net
    size = tuple(size or model.input_size)
    x = model.preprocess(torch.full((1, 3, *size), 0.5, device=model.device))
    used, attrs = method, []
    if method in ("auto", "fx"):
        try:
            nodes, raw, attrs = fx_graph(net, x)
            used = "fx"
        except Exception as err:  # noqa: BLE001 - fx cannot trace every network; the module tree always works
            if method == "fx":
                reason = " ".join(str(err).split())[:160]
                raise NnfeatError(f"torch.fx cannot trace {model.name} ({type(err).__name__}: {reason}); "
                                  "use method='hooks'") from None
            used = "hooks"
    if used == "hooks":
        try:
            nodes, raw = hook_graph(net, x)
        except Exception as err:  # noqa: BLE001
            reason = " ".join(str(err).split())[:160]
            raise NnfeatError(f"{model.name} does not run on a (1, 3, {size[0]}, {size[1]}) input "
                              f"({type(err).__name__}: {reason})") from None
    modules = dict(net.named_modules())
    group_names: dict[str, None] = {}
    for n in nodes:
        g = n.group
        while g:
            group_names.setdefault(g)
            g = parent_name(g)
    order = {name: i for i, name in enumerate(modules)}
    names = sorted(group_names, key=lambda g: order.get(g, len(order)))
    shapes = group_shapes(net, x, names)
    groups = {g: GraphGroup(g, type(modules[g]).__name__, parent_name(g), shapes.get(g), own_params(modules[g]))
              for g in names}
    for n in nodes:
        if n.group:
            groups[n.group].nodes.append(n.id)
        g = n.group
        while g:
            groups[g].flops += n.flops
            g = parent_name(g)
    for g in names:
        if groups[g].parent:
            groups[groups[g].parent].groups.append(g)
    edges = _edge_kinds(nodes, raw)
    name = getattr(model, "name", type(net).__name__)
    called = {n.layer.split("#")[0] for n in nodes if n.kind == "module"}
    called |= {parent_name(a) for a in attrs}  # modules whose weights functions read (Swin's attention)
    unused = [m for m, mod in modules.items() if m and m not in called and next(iter(mod.children()), None) is None
              and not any(m.startswith(c + ".") for c in called)]
    return ModelGraph(name, used, [1, 3, *size], nodes, edges, [groups[g] for g in names], own_params(net), unused)


