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
"""

from __future__ import annotations

import operator
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from nnfeat.errors import NnfeatError
from nnfeat.layouts import OUTPUT

__all__ = ["GraphNode", "GraphEdge", "GraphGroup", "ModelGraph", "model_graph", "node_anchor", "layered_layout",
           "collapse", "INPUT_ID"]

#: The id of the network input node (the normalized image the network sees).
INPUT_ID = "input"
_ADD_NAMES = {"add", "iadd", "add_"}
_CAT_NAMES = {"cat", "concat", "concatenate"}


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


# ------------------------------------------------------------------------------------------------------------
def _first_tensor(value: Any) -> torch.Tensor | None:
    if torch.is_tensor(value):
        return value
    if isinstance(value, (tuple, list)):
        return next((t for t in map(_first_tensor, value) if t is not None), None)
    return None


def _shape(value: Any) -> list[int] | None:
    t = _first_tensor(value)
    return None if t is None else [int(s) for s in t.shape]


def _parent(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


def _own_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class _LeafTracer(torch.fx.Tracer):
    """fx tracer whose leaves are torch.nn's leaves plus every module without children."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return super().is_leaf_module(m, qualname) or next(iter(m.children()), None) is None


def _flops(fn, *args, **kwargs) -> tuple[Any, int]:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        out = fn(*args, **kwargs)
    return out, int(counter.get_total_flops())


def _op_name(node: torch.fx.Node) -> str:
    target = node.target
    if node.op == "call_method":
        return str(target)
    name = getattr(target, "__name__", None) or str(target)
    return name


def _fx_graph(net: nn.Module, x: torch.Tensor) -> tuple[list[GraphNode], list[tuple[str, str]], list[str]]:
    """Trace ``net`` with fx and run it node by node on ``x``: (nodes, raw edges, the parameters and buffers
    that functions read directly)."""
    graph = _LeafTracer().trace(net)
    gm = torch.fx.GraphModule(net, graph)
    modules = dict(net.named_modules())
    counts: dict[str, int] = {}
    for n in graph.nodes:
        if n.op == "call_module":
            counts[n.target] = counts.get(n.target, 0) + 1
    seen: dict[str, int] = {}
    results: dict[str, tuple[Any, int]] = {}

    class Probe(torch.fx.Interpreter):
        def run_node(self, n):
            out, flops = _flops(super().run_node, n)
            results[n.name] = (out, flops)
            return out

    Probe(gm).run(x)
    drawn: dict[str, list[str]] = {}  # fx node name -> the drawn ids it stands for
    extra_params: dict[str, int] = {}
    nodes: list[GraphNode] = []
    edges: list[tuple[str, str]] = []
    for n in graph.nodes:
        out, flops = results.get(n.name, (None, 0))
        sources = [s for a in n.all_input_nodes for s in drawn.get(a.name, [])]
        if n.op == "placeholder":
            nodes.append(GraphNode(INPUT_ID, None, "input", "input", "", _shape(out)))
            drawn[n.name] = [INPUT_ID]
            continue
        if n.op == "output":
            nodes.append(GraphNode(OUTPUT, OUTPUT, "output", "output", "", _shape(out)))
            edges += [(s, OUTPUT) for s in dict.fromkeys(sources)]
            continue
        if n.op == "get_attr":  # a parameter or buffer used by a function: counted on its consumers
            attr = _fx_attr(net, str(n.target))
            drawn[n.name] = []
            extra_params[n.name] = attr.numel() if isinstance(attr, nn.Parameter) else 0
            continue
        if (n.op == "call_function" and n.target is operator.getitem) or _first_tensor(out) is None:
            drawn[n.name] = sources if _first_tensor(out) is not None else []
            extra_params[n.name] = sum(extra_params.get(a.name, 0) for a in n.all_input_nodes)  # passed on
            continue
        params = sum(extra_params.get(a.name, 0) for a in n.all_input_nodes)
        if n.op == "call_module":
            target = str(n.target)
            k = seen.get(target, 0)
            seen[target] = k + 1
            layer = target if counts[target] == 1 else f"{target}#{k}"
            node = GraphNode(layer, layer, "module", type(modules[target]).__name__, _parent(target), _shape(out),
                             params + (_own_params(modules[target]) if k == 0 else 0), flops)
        else:
            stack = n.meta.get("nn_module_stack") or {}
            group = ""
            if stack:
                key, value = list(stack.items())[-1]
                group = value[0] if isinstance(value, tuple) else str(key)
                group = group if group in modules else ""
            node = GraphNode(f"op:{n.name}", None, "op", _op_name(n), group, _shape(out), params, flops)
        nodes.append(node)
        drawn[n.name] = [node.id]
        edges += [(s, node.id) for s in dict.fromkeys(sources)]
    return nodes, edges, [str(n.target) for n in graph.nodes if n.op == "get_attr"]


def _fx_attr(net: nn.Module, target: str) -> Any:
    obj: Any = net
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _hook_graph(net: nn.Module, x: torch.Tensor) -> tuple[list[GraphNode], list[tuple[str, str]]]:
    """Run ``net`` once on ``x`` with hooks on its leaf modules: (nodes, raw edges) by tensor provenance."""
    from torch.utils.flop_counter import FlopCounterMode

    leaves = [(name, m) for name, m in net.named_modules() if name and next(iter(m.children()), None) is None]
    records: list[tuple[str, str, list[int], list[int] | None, int]] = []  # (name, type, input ids, shape, flops)
    producer: dict[int, int] = {id(x): -1}
    keep: list[Any] = [x]
    active: list[FlopCounterMode] = []
    handles = []

    def pre(name):
        def hook(_m, inputs):
            if not active:
                counter = FlopCounterMode(display=False)
                counter.__enter__()
                active.append(counter)
            else:
                active.append(None)  # a leaf inside a leaf: counted by the outer one
        return hook

    def post(name, module):
        def hook(_m, inputs, out):
            counter = active.pop()
            flops = 0
            if counter is not None:
                counter.__exit__(None, None, None)
                flops = int(counter.get_total_flops())
            ids = [id(t) for t in inputs if torch.is_tensor(t)]
            records.append((name, type(module).__name__, ids, _shape(out), flops))
            t = _first_tensor(out)
            if t is not None:
                producer[id(t)] = len(records) - 1
                keep.append(t)
        return hook

    try:
        for name, m in leaves:
            handles.append(m.register_forward_pre_hook(pre(name)))
            handles.append(m.register_forward_hook(post(name, m)))
        out = net(x)
    finally:
        for h in handles:
            h.remove()
    counts: dict[str, int] = {}
    for name, *_ in records:
        counts[name] = counts.get(name, 0) + 1
    modules = dict(net.named_modules())
    seen: dict[str, int] = {}
    ids: list[str] = []
    nodes = [GraphNode(INPUT_ID, None, "input", "input", "", _shape(x))]
    edges: list[tuple[str, str]] = []
    for i, (name, kind, inputs, shape, flops) in enumerate(records):
        k = seen.get(name, 0)
        seen[name] = k + 1
        layer = name if counts[name] == 1 else f"{name}#{k}"
        ids.append(layer)
        nodes.append(GraphNode(layer, layer, "module", kind, _parent(name), shape,
                               _own_params(modules[name]) if k == 0 else 0, flops))
        sources = [producer[t] for t in inputs if t in producer and producer[t] < i]
        if not sources:  # made by plain functions after some module: the module called just before
            sources = [i - 1]
        edges += [(INPUT_ID if s < 0 else ids[s], layer) for s in dict.fromkeys(sources)]
    nodes.append(GraphNode(OUTPUT, OUTPUT, "output", "output", "", _shape(out)))
    last = producer.get(id(_first_tensor(out)), len(records) - 1)
    edges.append((INPUT_ID if last < 0 else ids[last], OUTPUT))
    return nodes, edges


def _group_shapes(net: nn.Module, x: torch.Tensor, names: Sequence[str]) -> dict[str, list[int] | None]:
    """First-call output shape of each named module (one hooked forward pass)."""
    shapes: dict[str, list[int] | None] = {}
    modules = dict(net.named_modules())
    handles = []
    for name in names:
        def hook(_m, _i, out, name=name):
            shapes.setdefault(name, _shape(out))
        handles.append(modules[name].register_forward_hook(hook))
    try:
        net(x)
    finally:
        for h in handles:
            h.remove()
    return shapes


def _edge_kinds(nodes: list[GraphNode], raw: list[tuple[str, str]]) -> list[GraphEdge]:
    """Raw edges with their kinds: into ``cat`` -> concat; into an ``add`` of two graph tensors, the incoming
    edge that skips over the most nodes (longest-path rank difference) -> residual."""
    rank = _ranks([n.id for n in nodes], raw)
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
def model_graph(model, size: tuple[int, int] | None = None, *, method: str = "auto") -> ModelGraph:
    """The graph of ``model`` (an nnfeat Model, or any nn.Module taking (B, 3, H, W)) on one image of ``size``
    (default: the model's input size). ``method``: ``auto`` (fx, else hooks), ``fx`` or ``hooks``."""
    from nnfeat.models.base import as_model

    if method not in ("auto", "fx", "hooks"):
        raise NnfeatError(f"unknown graph method '{method}'; expected auto, fx or hooks")
    model = as_model(model)
    net = model.net
    size = tuple(size or model.input_size)
    x = model.preprocess(torch.full((1, 3, *size), 0.5, device=model.device))
    used, attrs = method, []
    if method in ("auto", "fx"):
        try:
            nodes, raw, attrs = _fx_graph(net, x)
            used = "fx"
        except Exception as err:  # noqa: BLE001 - fx cannot trace every network; the module tree always works
            if method == "fx":
                reason = " ".join(str(err).split())[:160]
                raise NnfeatError(f"torch.fx cannot trace {model.name} ({type(err).__name__}: {reason}); "
                                  "use method='hooks'") from None
            used = "hooks"
    if used == "hooks":
        try:
            nodes, raw = _hook_graph(net, x)
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
            g = _parent(g)
    order = {name: i for i, name in enumerate(modules)}
    names = sorted(group_names, key=lambda g: order.get(g, len(order)))
    shapes = _group_shapes(net, x, names)
    groups = {g: GraphGroup(g, type(modules[g]).__name__, _parent(g), shapes.get(g), _own_params(modules[g]))
              for g in names}
    for n in nodes:
        if n.group:
            groups[n.group].nodes.append(n.id)
        g = n.group
        while g:
            groups[g].flops += n.flops
            g = _parent(g)
    for g in names:
        if groups[g].parent:
            groups[groups[g].parent].groups.append(g)
    edges = _edge_kinds(nodes, raw)
    name = getattr(model, "name", type(net).__name__)
    called = {n.layer.split("#")[0] for n in nodes if n.kind == "module"}
    called |= {_parent(a) for a in attrs}  # modules whose weights functions read (Swin's attention)
    unused = [m for m, mod in modules.items() if m and m not in called and next(iter(mod.children()), None) is None
              and not any(m.startswith(c + ".") for c in called)]
    return ModelGraph(name, used, [1, 3, *size], nodes, edges, [groups[g] for g in names], _own_params(net), unused)


# ------------------------------------------------------------------------------------------------------------
def collapse(graph: ModelGraph, depth: int) -> tuple[list[dict], list[tuple[str, str, str]]]:
    """The graph with every block at nesting ``depth`` (0: top-level blocks such as ``layer1``) shown as one
    node: (visible items ``{"id", "label", "type", "shape", "block"}``, edges (source, target, kind) between
    them, duplicates merged, a residual or concat kind kept over data)."""
    def owner(node: GraphNode) -> str:
        parts = node.group.split(".") if node.group else []
        return ".".join(parts[: depth + 1]) if len(parts) > depth else node.id

    groups = {g.name: g for g in graph.groups}
    items: dict[str, dict] = {}
    rep: dict[str, str] = {}
    for n in graph.nodes:
        o = owner(n)
        rep[n.id] = o
        if o not in items:
            block = o in groups and o != n.id
            g = groups.get(o) if block else None
            items[o] = {"id": o, "label": o, "type": g.type if g else n.type,
                        "shape": g.shape if g else n.shape, "block": block}
    merged: dict[tuple[str, str], str] = {}
    for e in graph.edges:
        s, t = rep[e.source], rep[e.target]
        if s != t and merged.get((s, t), "data") == "data":
            merged[(s, t)] = e.kind
    return list(items.values()), [(s, t, k) for (s, t), k in merged.items()]


def _ranks(ids: Sequence[str], edges: Sequence[tuple[str, ...]]) -> dict[str, int]:
    """Longest-path layering: rank(v) = 1 + max rank of its sources (0 for sources); ``ids`` in a topological
    order (fx and hook order are)."""
    incoming: dict[str, list[str]] = {}
    for e in edges:
        incoming.setdefault(e[1], []).append(e[0])
    rank: dict[str, int] = {}
    for v in ids:
        rank[v] = 1 + max((rank.get(s, 0) for s in incoming.get(v, [])), default=-1)
    return rank


def layered_layout(ids: Sequence[str], edges: Sequence[tuple[str, ...]], sweeps: int = 4
                   ) -> tuple[dict[str, tuple[int, float]], list[list[tuple[int, float]]]]:
    """A layered DAG layout: ({id: (rank, x slot)}, per edge the (rank, x) points it passes through, ends
    included). Long edges get one dummy point per rank they cross; ranks are ordered by ``sweeps`` down/up
    barycenter sweeps and packed left to right, each rank centred."""
    rank = _ranks(ids, edges)
    layers: dict[int, list[str]] = {}
    for v in ids:
        layers.setdefault(rank[v], []).append(v)
    chains: list[list[str]] = []
    up: dict[str, list[str]] = {}
    down: dict[str, list[str]] = {}
    for i, e in enumerate(edges):
        s, t = e[0], e[1]
        chain = [s] + [f"\0{i}.{r}" for r in range(rank[s] + 1, rank[t])] + [t]
        for r, d in zip(range(rank[s] + 1, rank[t]), chain[1:-1]):
            layers[r].append(d)
            rank[d] = r
        for a, b in zip(chain, chain[1:]):
            down.setdefault(a, []).append(b)
            up.setdefault(b, []).append(a)
        chains.append(chain)
    pos = {v: float(i) for layer in layers.values() for i, v in enumerate(layer)}
    top = max(layers, default=0)
    for sweep in range(sweeps):
        seq = range(1, top + 1) if sweep % 2 == 0 else range(top - 1, -1, -1)
        nbrs = up if sweep % 2 == 0 else down
        for r in seq:
            layer = layers[r]
            key = {v: (sum(pos[u] for u in nbrs[v]) / len(nbrs[v]) if nbrs.get(v) else pos[v]) for v in layer}
            layer.sort(key=lambda v: key[v])
            for i, v in enumerate(layer):
                pos[v] = float(i)
    width = max((len(layer) for layer in layers.values()), default=1)
    for layer in layers.values():
        shift = (width - len(layer)) / 2
        for i, v in enumerate(layer):
            pos[v] = i + shift
    nodes = {v: (rank[v], pos[v]) for v in ids}
    paths = [[(rank[v], pos[v]) for v in chain] for chain in chains]
    return nodes, paths
