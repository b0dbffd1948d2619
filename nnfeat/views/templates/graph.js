"use strict";
(function () {
  const data = JSON.parse(document.getElementById("graph-data").textContent);
  const SVGNS = "http://www.w3.org/2000/svg";
  const NW = 176, NH = 36, SLOT = 204, GAP = 30, PAD = 7, HEAD = 15;
  const svg = document.getElementById("graph");
  const viewport = document.getElementById("viewport");
  const byId = new Map(data.nodes.map((n) => [n.id, n]));
  const groups = new Map(data.groups.map((g) => [g.name, g]));
  const collapsed = new Set(data.collapsed || []);
  let selected = null, view = { x: 0, y: 0, k: 1 }, box = { w: 1, h: 1 };

  function ancestors(group) { const out = []; while (group) { out.push(group); group = groups.get(group).parent; } return out; }
  function owner(node) {  // the outermost collapsed block holding the node, else the node itself
    const chain = ancestors(node.group);
    for (let i = chain.length - 1; i >= 0; i--) if (collapsed.has(chain[i])) return chain[i];
    return node.id;
  }
  function fmt(n) {
    const units = [["T", 1e12], ["G", 1e9], ["M", 1e6], ["k", 1e3]];
    for (const [p, s] of units) if (Math.abs(n) >= s) return (n / s).toPrecision(3) + " " + p;
    return String(n);
  }
  function rel(name, group) {  // a name inside its block's frame, without the block's prefix; at most 27 characters
    const short = group && name.startsWith(group + ".") ? name.slice(group.length + 1) : name.replace(/^op:/, "");
    return short.length > 27 ? "\u2026" + short.slice(-26) : short;
  }
  function shapeText(s) { return s ? s.join("\u00d7") : "\u2014"; }
  function el(tag, attrs, parent) {
    const e = document.createElementNS(SVGNS, tag);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }

  // ---- the visible graph: nodes and collapsed blocks, merged edges
  function visible() {
    const items = [], index = new Map(), rep = new Map();
    for (const n of data.nodes) {
      const o = owner(n);
      rep.set(n.id, o);
      if (!index.has(o)) {
        const g = o !== n.id ? groups.get(o) : null;
        const item = g ? { id: o, kind: "block", type: g.type, shape: g.shape, params: g.params, flops: g.flops,
                           group: g.parent, anchor: g.anchor, layer: g.name }
                       : { id: n.id, kind: n.kind, type: n.type, shape: n.shape, params: n.params, flops: n.flops,
                           group: n.group, anchor: n.anchor, layer: n.layer };
        index.set(o, items.length);
        items.push(item);
      }
    }
    const merged = new Map();
    for (const e of data.edges) {
      const s = rep.get(e.source), t = rep.get(e.target);
      if (s === t) continue;
      const key = s + "\u0000" + t;
      if (!merged.has(key) || merged.get(key).kind === "data") merged.set(key, { source: s, target: t, kind: e.kind });
    }
    return { items, edges: [...merged.values()] };
  }

  // ---- layered layout (the same as nnfeat.analysis.graph.layered_layout)
  function layout(ids, edges) {
    const rank = new Map(), incoming = new Map();
    for (const e of edges) { if (!incoming.has(e.target)) incoming.set(e.target, []); incoming.get(e.target).push(e.source); }
    for (const v of ids) {
      let r = -1;
      for (const s of incoming.get(v) || []) r = Math.max(r, rank.get(s) || 0);
      rank.set(v, r + 1);
    }
    const layers = [];
    const put = (r, v) => { (layers[r] = layers[r] || []).push(v); };
    for (const v of ids) put(rank.get(v), v);
    const up = new Map(), down = new Map(), chains = [];
    const link = (m, a, b) => { if (!m.has(a)) m.set(a, []); m.get(a).push(b); };
    edges.forEach((e, i) => {
      const chain = [e.source];
      for (let r = rank.get(e.source) + 1; r < rank.get(e.target); r++) {
        const d = "\u0000" + i + "." + r; rank.set(d, r); put(r, d); chain.push(d);
      }
      chain.push(e.target);
      for (let j = 0; j + 1 < chain.length; j++) { link(down, chain[j], chain[j + 1]); link(up, chain[j + 1], chain[j]); }
      chains.push(chain);
    });
    for (let r = 0; r < layers.length; r++) layers[r] = layers[r] || [];
    const pos = new Map();
    layers.forEach((layer) => layer.forEach((v, i) => pos.set(v, i)));
    for (let sweep = 0; sweep < 4; sweep++) {
      const downward = sweep % 2 === 0, nbrs = downward ? up : down;
      const order = [];
      if (downward) for (let r = 1; r < layers.length; r++) order.push(r);
      else for (let r = layers.length - 2; r >= 0; r--) order.push(r);
      for (const r of order) {
        const key = new Map();
        for (const v of layers[r]) {
          const ns = nbrs.get(v);
          key.set(v, ns && ns.length ? ns.reduce((a, u) => a + pos.get(u), 0) / ns.length : pos.get(v));
        }
        layers[r].sort((a, b) => key.get(a) - key.get(b));
        layers[r].forEach((v, i) => pos.set(v, i));
      }
    }
    const width = Math.max(1, ...layers.map((l) => l.length));
    layers.forEach((layer) => { const shift = (width - layer.length) / 2; layer.forEach((v, i) => pos.set(v, i + shift)); });
    return { rank, pos, chains, ranks: layers.length, width };
  }

  // ---- drawing
  function draw() {
    const { items, edges } = visible();
    const L = layout(items.map((i) => i.id), edges);
    // expanded blocks with something visible, and the ranks they span
    const spans = new Map();
    for (const it of items) {
      for (const g of ancestors(it.group)) {
        const r = L.rank.get(it.id), s = spans.get(g);
        if (!s) spans.set(g, { lo: r, hi: r, items: [it.id] }); else { s.lo = Math.min(s.lo, r); s.hi = Math.max(s.hi, r); s.items.push(it.id); }
      }
    }
    // room between ranks for the block frames that end above and start below
    const ends = new Array(L.ranks).fill(0), starts = new Array(L.ranks).fill(0);
    for (const s of spans.values()) { ends[s.hi]++; starts[s.lo]++; }
    const y = []; let acc = 20;
    for (let r = 0; r < L.ranks; r++) { acc += starts[r] * HEAD; y.push(acc); acc += NH + GAP + ends[r] * PAD; }
    const X = (v) => 20 + L.pos.get(v) * SLOT;
    viewport.textContent = "";
    const gLayer = el("g", { class: "groups" }, viewport), eLayer = el("g", { class: "edges" }, viewport);
    const nLayer = el("g", { class: "nodes" }, viewport);
    // block frames, outermost first
    const frames = new Map();
    const names = [...spans.keys()].sort((a, b) => a.split(".").length - b.split(".").length);
    const frameOf = (g) => {
      if (frames.has(g)) return frames.get(g);
      const s = spans.get(g);
      let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
      for (const id of s.items) { const x = X(id), yy = y[L.rank.get(id)]; x0 = Math.min(x0, x); x1 = Math.max(x1, x + NW); y0 = Math.min(y0, yy); y1 = Math.max(y1, yy + NH); }
      for (const sub of spans.keys()) if (groups.get(sub).parent === g) { const f = frameOf(sub); x0 = Math.min(x0, f.x0); x1 = Math.max(x1, f.x1); y0 = Math.min(y0, f.y0); y1 = Math.max(y1, f.y1); }
      const f = { x0: x0 - PAD, x1: x1 + PAD, y0: y0 - HEAD, y1: y1 + PAD };
      frames.set(g, f);
      return f;
    };
    for (const g of names) {
      const f = frameOf(g), info = groups.get(g);
      const grp = el("g", { class: "group", id: info.anchor, "data-name": g }, gLayer);
      el("rect", { x: f.x0, y: f.y0, width: f.x1 - f.x0, height: f.y1 - f.y0, rx: 6 }, grp);
      const t = el("text", { x: f.x0 + 5, y: f.y0 + 11, class: "collapse", "data-name": g }, grp);
      t.textContent = "\u2212 " + rel(g, info.parent) + "  " + info.type;
      t.addEventListener("click", (ev) => { ev.stopPropagation(); toggle(g); });
    }
    edges.forEach((e, i) => {
      const pts = L.chains[i].map((v) => [X(v) + NW / 2, y[L.rank.get(v)] + NH / 2]);
      pts[0][1] += NH / 2; pts[pts.length - 1][1] -= NH / 2;
      let d = "M" + pts[0][0] + "," + pts[0][1];
      for (let j = 1; j < pts.length; j++) {
        const [ax, ay] = pts[j - 1], [bx, by] = pts[j], m = (by - ay) / 2;
        d += " C" + ax + "," + (ay + m) + " " + bx + "," + (by - m) + " " + bx + "," + by;
      }
      el("path", { d, class: "edge " + e.kind, "data-source": e.source, "data-target": e.target, "marker-end": "url(#arrow)" }, eLayer);
    });
    for (const it of items) {
      const g = el("g", { class: "node " + it.kind, id: it.anchor, "data-name": it.id,
                          transform: "translate(" + X(it.id) + "," + y[L.rank.get(it.id)] + ")" }, nLayer);
      el("rect", { width: NW, height: NH, rx: it.kind === "block" ? 6 : 4 }, g);
      const a = el("text", { x: 6, y: 14 }, g);
      a.textContent = (it.kind === "block" ? "+ " : "") + rel(it.id, it.group);
      const b = el("text", { x: 6, y: 29, class: "sub" }, g);
      const sub = it.type + "  " + shapeText(it.shape ? it.shape.slice(1) : null);
      b.textContent = sub.length > 31 ? sub.slice(0, 30) + "\u2026" : sub;
      const tip = el("title", {}, g);
      tip.textContent = it.id + "\n" + it.type + "\nshape " + shapeText(it.shape) + "\nparameters " +
        it.params.toLocaleString("en-US") + "\nFLOPs " + fmt(it.flops);
      g.addEventListener("click", (ev) => { ev.stopPropagation(); if (it.kind === "block") toggle(it.id); else select(it.id); });
      if (it.id === selected) g.classList.add("selected");
    }
    box = { w: 40 + L.width * SLOT, h: acc + 20 };
    document.getElementById("visible-count").textContent = "showing " + items.length + " of " + data.nodes.length + " nodes";
    api.drawn = items.length;
  }

  // ---- pan and zoom
  function apply() { viewport.setAttribute("transform", "translate(" + view.x + "," + view.y + ") scale(" + view.k + ")"); }
  function fit() {
    const r = svg.getBoundingClientRect();
    const k = Math.max(0.05, Math.min(1, (r.width - 20) / box.w));
    view = { k, x: (r.width - box.w * k) / 2, y: 10 };
    apply();
  }
  svg.addEventListener("wheel", (ev) => {
    ev.preventDefault();
    const r = svg.getBoundingClientRect(), mx = ev.clientX - r.left, my = ev.clientY - r.top;
    const f = Math.exp(-ev.deltaY * 0.0015), k = Math.max(0.02, Math.min(8, view.k * f));
    view.x = mx - (mx - view.x) * (k / view.k); view.y = my - (my - view.y) * (k / view.k); view.k = k;
    apply();
  }, { passive: false });
  let drag = null;
  const canvas = document.getElementById("canvas");
  svg.addEventListener("pointerdown", (ev) => { drag = { x: ev.clientX - view.x, y: ev.clientY - view.y }; canvas.classList.add("dragging"); });
  window.addEventListener("pointermove", (ev) => { if (drag) { view.x = ev.clientX - drag.x; view.y = ev.clientY - drag.y; apply(); } });
  window.addEventListener("pointerup", () => { drag = null; canvas.classList.remove("dragging"); });

  // ---- interaction
  function toggle(name) {
    if (!groups.has(name)) return false;
    if (collapsed.has(name)) collapsed.delete(name); else collapsed.add(name);
    draw(); apply();
    return collapsed.has(name);
  }
  function select(name) {
    let it = byId.get(name) || null, block = null;
    if (!it && groups.has(name)) block = groups.get(name);
    if (!it && !block) return false;
    for (const g of ancestors(it ? it.group : block.parent)) collapsed.delete(g);
    if (block) collapsed.add(name);
    selected = name;
    draw(); apply();
    const info = it || { id: name, type: block.type, shape: block.shape, params: block.params, flops: block.flops,
                         group: block.parent, layer: name };
    document.getElementById("panel-empty").hidden = true;
    document.getElementById("panel-fields").hidden = false;
    const set = (id, text) => { document.getElementById(id).textContent = text; };
    set("panel-name", info.id); set("panel-type", info.type); set("panel-shape", shapeText(info.shape));
    set("panel-params", info.params.toLocaleString("en-US")); set("panel-flops", info.flops.toLocaleString("en-US") + " (" + fmt(info.flops) + ")");
    set("panel-group", info.group || "(top)");
    document.getElementById("panel-layer").hidden = !info.layer;
    set("panel-layer-name", info.layer || "");
    const links = data.links || {}, url = links[info.id] || (info.layer && links[info.layer]) || "";
    document.getElementById("panel-report").hidden = !url;
    document.getElementById("panel-report-link").setAttribute("href", url || "#");
    return true;
  }
  function centre(name) {
    const e = document.querySelector('[data-name="' + CSS.escape(name) + '"]');
    if (!e) return;
    const r = svg.getBoundingClientRect(), b = e.getBoundingClientRect();
    view.x += r.left + r.width / 2 - (b.left + b.width / 2); view.y += r.top + r.height / 2 - (b.top + b.height / 2);
    apply();
  }
  function fromHash() {
    const anchor = decodeURIComponent(location.hash.slice(1));
    if (!anchor) return;
    const hit = data.nodes.find((n) => n.anchor === anchor) || data.groups.find((g) => g.anchor === anchor);
    if (hit) { select(hit.id || hit.name); centre(hit.id || hit.name); }
  }
  document.getElementById("expand-all").addEventListener("click", () => { collapsed.clear(); draw(); fit(); });
  document.getElementById("collapse-all").addEventListener("click", () => {
    collapsed.clear(); for (const g of data.groups) if (!g.parent) collapsed.add(g.name); draw(); fit();
  });
  document.getElementById("reset-view").addEventListener("click", fit);
  window.addEventListener("hashchange", fromHash);

  const api = window.nnfeatGraph = {
    ready: false, drawn: 0,
    visibleCount: () => api.drawn,
    toggle, select, centre, expandAll: () => { collapsed.clear(); draw(); fit(); },
    collapseAll: () => document.getElementById("collapse-all").click(),
    collapsed: () => [...collapsed],
  };
  draw(); fit(); fromHash();
  api.ready = true;
})();
