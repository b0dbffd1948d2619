(function () {
  "use strict";
  const t0 = performance.now();
  const data = JSON.parse(document.getElementById("head-view-data").textContent);
  const NS = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);
  const H = data.heads, TQ = data.tq.length, TK = data.tk.length, G = data.geometry;
  const svg = $("lines-svg"), linesG = $("lines"), tokensG = $("tokens");

  // ---- the compact line tables: per layer, lines per (head, query), then key index and weight x 100 ----------
  function bytes(b64) {
    const s = atob(b64), out = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out;
  }
  function u16(b64) {  // little-endian uint16, whatever the machine's byte order
    const b = bytes(b64), out = new Uint16Array(b.length >> 1);
    for (let i = 0; i < out.length; i++) out[i] = b[2 * i] | (b[2 * i + 1] << 8);
    return out;
  }
  const tables = [];  // decoded when a layer is first shown
  function table(l) {
    if (!tables[l]) {
      const counts = u16(data.lines[l].counts), start = new Uint32Array(counts.length + 1);
      for (let i = 0; i < counts.length; i++) start[i + 1] = start[i] + counts[i];
      tables[l] = { start: start, keys: u16(data.lines[l].keys), pct: bytes(data.lines[l].pct) };
    }
    return tables[l];
  }

  // ---- state -----------------------------------------------------------------------------------------------
  let layer = 0, hover = null;  // hover: {side: "q" | "k", i}
  const on = new Uint8Array(H).fill(1);
  const yOf = (i) => G.top + G.row * i + G.row / 2;

  // ---- tokens: two columns of text, each with its index; hover shows only that token's lines --------------
  function text(x, y, anchor, label, full, cls, id) {
    const t = document.createElementNS(NS, "text");
    t.setAttribute("x", x); t.setAttribute("y", y); t.setAttribute("text-anchor", anchor);
    t.setAttribute("dominant-baseline", "middle");
    if (id) t.id = id;
    if (cls) t.setAttribute("class", cls);
    t.textContent = label;
    if (full !== null && full !== label) {
      const tip = document.createElementNS(NS, "title"); tip.textContent = full; t.appendChild(tip);
    }
    tokensG.appendChild(t);
    return t;
  }
  svg.setAttribute("width", G.width); svg.setAttribute("height", G.height);
  svg.setAttribute("viewBox", "0 0 " + G.width + " " + G.height);
  text(G.qx, 14, "end", "queries", null, "title", null);
  text(G.kx, 14, "start", "keys", null, "title", null);
  const qText = [], kText = [];
  for (let i = 0; i < TQ; i++) qText.push(text(G.qx, yOf(i), "end", data.tq[i], data.fq[i], "tok q", "q" + i));
  for (let j = 0; j < TK; j++) kText.push(text(G.kx, yOf(j), "start", data.tk[j], data.fk[j], "tok k", "k" + j));
  tokensG.addEventListener("mouseover", (e) => {
    const t = e.target.closest ? e.target.closest("text.tok") : null;
    if (!t) return;
    const side = t.id[0], i = +t.id.slice(1);
    if (hover && hover.side === side && hover.i === i) return;
    setHover({ side: side, i: i });
  });
  tokensG.addEventListener("mouseout", (e) => {
    const t = e.target.closest ? e.target.closest("text.tok") : null;
    if (t && !(e.relatedTarget && t.contains(e.relatedTarget))) setHover(null);
  });
  function setHover(h) {
    if (hover) (hover.side === "q" ? qText : kText)[hover.i].classList.remove("active");
    hover = h;
    if (hover) (hover.side === "q" ? qText : kText)[hover.i].classList.add("active");
    draw();
  }

  // ---- lines: one path per (head, weight x 100), each M..L segment one (query, key) line -------------------
  let shown = 0;
  function draw() {
    const tb = table(layer), x1 = G.x1, x2 = G.x2;
    const paths = [];
    shown = 0;
    for (let h = 0; h < H; h++) {
      if (!on[h]) continue;
      const buckets = new Map();
      const q0 = hover && hover.side === "q" ? hover.i : 0, q1 = hover && hover.side === "q" ? hover.i + 1 : TQ;
      const onlyKey = hover && hover.side === "k" ? hover.i : -1;
      for (let q = q0; q < q1; q++) {
        const a = tb.start[h * TQ + q], b = tb.start[h * TQ + q + 1], yq = yOf(q);
        for (let e = a; e < b; e++) {
          const k = tb.keys[e];
          if (onlyKey >= 0 && k !== onlyKey) continue;
          const p = tb.pct[e];
          let seg = buckets.get(p);
          if (!seg) { seg = []; buckets.set(p, seg); }
          seg.push("M" + x1 + " " + yq + "L" + x2 + " " + yOf(k));
          shown++;
        }
      }
      const order = Array.from(buckets.keys()).sort((u, v) => u - v);
      for (const p of order) {
        const path = document.createElementNS(NS, "path");
        path.setAttribute("data-head", h);
        path.setAttribute("stroke", data.colours[h]);
        path.setAttribute("stroke-opacity", (p / 100).toFixed(2));
        path.setAttribute("d", buckets.get(p).join(""));
        paths.push(path);
      }
    }
    linesG.replaceChildren.apply(linesG, paths);
    svg.dataset.lines = shown;
    const what = hover ? (hover.side === "q" ? "query " : "key ") + hover.i + " \u201c" +
      (hover.side === "q" ? data.fq : data.fk)[hover.i] + "\u201d" : "all tokens";
    $("status").textContent = shown + " lines shown (" + what + ", weights \u2265 " + data.threshold + ")";
  }

  // ---- controls: layer, heads (with their scores on this layer) -------------------------------------------
  const select = $("layer");
  data.layers.forEach((name, l) => {
    const o = document.createElement("option"); o.value = l; o.textContent = "L" + l + ": " + name; select.appendChild(o);
  });
  select.addEventListener("change", () => { layer = +select.value; scores(); draw(); });
  const headBox = $("heads"), headEls = [], scoreEls = [];
  for (let h = 0; h < H; h++) {
    const el = document.createElement("span");
    el.className = "head"; el.id = "head" + h; el.setAttribute("role", "checkbox");
    const sw = document.createElement("span"); sw.className = "swatch"; sw.style.background = data.colours[h];
    const name = document.createElement("span"); name.textContent = "H" + h;
    const sc = document.createElement("span"); sc.className = "score";
    el.append(sw, name, sc);
    el.addEventListener("click", () => { on[h] = on[h] ? 0 : 1; heads(); draw(); });
    el.addEventListener("dblclick", () => { on.fill(0); on[h] = 1; heads(); draw(); });
    headBox.appendChild(el); headEls.push(el); scoreEls.push(sc);
  }
  function heads() {
    for (let h = 0; h < H; h++) {
      headEls[h].classList.toggle("off", !on[h]);
      headEls[h].setAttribute("aria-checked", on[h] ? "true" : "false");
    }
  }
  function scores() {
    const names = Object.keys(data.scores);
    for (let h = 0; h < H; h++) {
      scoreEls[h].textContent = names.map((n) => n + " " + (data.scores[n][layer][h] === null ? "\u2013" : data.scores[n][layer][h])).join(" \u00b7 ");
    }
  }
  $("all-heads").addEventListener("click", () => { on.fill(1); heads(); draw(); });
  $("no-heads").addEventListener("click", () => { on.fill(0); heads(); draw(); });

  layer = data.start.layer; select.value = layer;
  on.fill(0); data.start.heads.forEach((h) => { on[h] = 1; });
  heads(); scores(); draw();
  window.headView = {
    ready: true,
    loadMs: performance.now() - t0,
    lines: () => shown,
    setLayer: (l) => { select.value = l; layer = +l; scores(); draw(); },
    setHeads: (list) => { on.fill(0); list.forEach((h) => { on[h] = 1; }); heads(); draw(); },
  };
})();
