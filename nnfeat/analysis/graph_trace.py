"""Tracing a network into graph nodes (see :mod:`nnfeat.analysis.graph`): with ``torch.fx`` where it traces
(:func:`fx_graph`: one node per leaf-module call and per tensor function, the real data flow), else with forward
hooks on the leaf modules (:func:`hook_graph`: edges by tensor provenance). Every node carries its output shape,
its parameters and its FLOPs (:mod:`torch.utils.flop_counter`)."""

from __future__ import annotations

import operator
from typing import Any, Sequence

import torch
from torch import nn

from nnfeat.analysis.graph_types import INPUT_ID, GraphNode
from nnfeat.layouts import OUTPUT

__all__ = ["fx_graph", "hook_graph", "group_shapes", "shape_of", "parent_name", "own_params"]


def _first_tensor(value: Any) -> torch.Tensor | None:
    if torch.is_tensor(value):
        return value
    if isinstance(value, (tuple, list)):
        return next((t for t in map(_first_tensor, value) if t is not None), None)
    return None


def shape_of(value: Any) -> list[int] | None:
    """The shape of the first tensor in ``value`` (a tensor, or a tuple / list holding one), or None."""
    t = _first_tensor(value)
    return None if t is None else [int(s) for s in t.shape]


def parent_name(name: str) -> str:
    """``layer1.0.conv1`` -> ``layer1.0``; a top-level name -> ``""``."""
    return name.rsplit(".", 1)[0] if "." in name else ""


def own_params(module: nn.Module) -> int:
    """Parameters of ``module`` and its children."""
    return sum(p.numel() for p in module.parameters())


class _LeafTracer(torch.fx.Tracer):
    """fx tracer whose leaves are torch.nn's leaves plus every module without children."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return super().is_leaf_module(m, qualname) or next(iter(m.children()), None) is None


def _flops(fn, *args, **kwargs) -> tuple[Any, int]:
    from torch.utils.flop_counter import FlopCounterMode  # lazy: importing it loads triton (~0.3 s)

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


def fx_graph(net: nn.Module, x: torch.Tensor) -> tuple[list[GraphNode], list[tuple[str, str]], list[str]]:
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
            nodes.append(GraphNode(INPUT_ID, None, "input", "input", "", shape_of(out)))
            drawn[n.name] = [INPUT_ID]
            continue
        if n.op == "output":
            nodes.append(GraphNode(OUTPUT, OUTPUT, "output", "output", "", shape_of(out)))
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
            node = GraphNode(layer, layer, "module", type(modules[target]).__name__, parent_name(target), shape_of(out),
                             params + (own_params(modules[target]) if k == 0 else 0), flops)
        else:
            stack = n.meta.get("nn_module_stack") or {}
            group = ""
            if stack:
                key, value = list(stack.items())[-1]
                group = value[0] if isinstance(value, tuple) else str(key)
                group = group if group in modules else ""
            node = GraphNode(f"op:{n.name}", None, "op", _op_name(n), group, shape_of(out), params, flops)
        nodes.append(node)
        drawn[n.name] = [node.id]
        edges += [(s, node.id) for s in dict.fromkeys(sources)]
    return nodes, edges, [str(n.target) for n in graph.nodes if n.op == "get_attr"]


def _fx_attr(net: nn.Module, target: str) -> Any:
    obj: Any = net
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def hook_graph(net: nn.Module, x: torch.Tensor) -> tuple[list[GraphNode], list[tuple[str, str]]]:
    """Run ``net`` once on ``x`` with hooks on its leaf modules: (nodes, raw edges) by tensor provenance."""
    from torch.utils.flop_counter import FlopCounterMode  # lazy: importing it loads triton (~0.3 s)

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
            records.append((name, type(module).__name__, ids, shape_of(out), flops))
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
    nodes = [GraphNode(INPUT_ID, None, "input", "input", "", shape_of(x))]
    edges: list[tuple[str, str]] = []
    for i, (name, kind, inputs, shape, flops) in enumerate(records):
        k = seen.get(name, 0)
        seen[name] = k + 1
        layer = name if counts[name] == 1 else f"{name}#{k}"
        ids.append(layer)
        nodes.append(GraphNode(layer, layer, "module", kind, parent_name(name), shape,
                               own_params(modules[name]) if k == 0 else 0, flops))
        sources = [producer[t] for t in inputs if t in producer and producer[t] < i]
        if not sources:  # made by plain functions after some module: the module called just before
            sources = [i - 1]
        edges += [(INPUT_ID if s < 0 else ids[s], layer) for s in dict.fromkeys(sources)]
    nodes.append(GraphNode(OUTPUT, OUTPUT, "output", "output", "", shape_of(out)))
    last = producer.get(id(_first_tensor(out)), len(records) - 1)
    edges.append((INPUT_ID if last < 0 else ids[last], OUTPUT))
    return nodes, edges


def group_shapes(net: nn.Module, x: torch.Tensor, names: Sequence[str]) -> dict[str, list[int] | None]:
    """First-call output shape of each named module (one hooked forward pass)."""
    shapes: dict[str, list[int] | None] = {}
    modules = dict(net.named_modules())
    handles = []
    for name in names:
        def hook(_m, _i, out, name=name):
            shapes.setdefault(name, shape_of(out))
        handles.append(modules[name].register_forward_hook(hook))
    try:
        net(x)
    finally:
        for h in handles:
            h.remove()
    return shapes
