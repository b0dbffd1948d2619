"""Laying a model graph out (tensors and networks not involved): :func:`collapse` (blocks at a depth shown as one
node each) and :func:`layered_layout`, the layout both the PNG overview and the page use: longest-path layering
(Sugiyama et al. 1981), dummy nodes on long edges, a few barycenter ordering sweeps."""

from __future__ import annotations

from typing import Sequence

from nnfeat.analysis.graph_types import GraphNode, ModelGraph

__all__ = ["collapse", "layered_layout", "longest_path_ranks"]


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


def longest_path_ranks(ids: Sequence[str], edges: Sequence[tuple[str, ...]]) -> dict[str, int]:
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
    rank = longest_path_ranks(ids, edges)
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
