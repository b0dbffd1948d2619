(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("scatter-data").textContent);
  const $ = (id) => document.getElementById(id);
  const N = data.n;
  // a fixed categorical palette; labels beyond it get golden-angle hues
  const PALETTE = ["#2f6fce", "#e8730c", "#23a04a", "#d3343f", "#8553c4", "#8d5a3b", "#d64ea1", "#6a7080",
                   "#aaa512", "#18a6bb"];
  const HOVER_RADIUS = 9;  // px: the nearest visible point within this distance of the cursor is hovered

  // ---- labels: one code per point (a single pseudo-label when the points are unlabelled) ----------------------
  const labelNames = data.labels.length ? data.labels : ["all points"];
  const L = labelNames.length;
  const codes = new Int32Array(N);
  if (data.label) for (let i = 0; i < N; i++) codes[i] = data.label[i];
  const counts = new Int32Array(L);
  for (let i = 0; i < N; i++) counts[codes[i]]++;
  const members = [];  // per label: its points, so drawing sets one fill colour per label
  const fill = new Int32Array(L);
  for (let l = 0; l < L; l++) members.push(new Int32Array(counts[l]));
  for (let i = 0; i < N; i++) { const l = codes[i]; members[l][fill[l]++] = i; }
  const visible = new Uint8Array(L).fill(1);
  function colour(l) {
    if (l < PALETTE.length) return PALETTE[l];
    const hue = (l * 137.508 + 20) % 360, light = 38 + 14 * (Math.floor(l / PALETTE.length) % 3);
    return "hsl(" + hue.toFixed(1) + ", 65%, " + light + "%)";
  }
  function visibleCount() {
    let total = 0;
    for (let l = 0; l < L; l++) if (visible[l]) total += counts[l];
    return total;
  }

  let hovered = -1;      // the hovered point (an image index into the shared points), or -1
  let hoveredPanel = null;
  const panels = [];

  // ---- one panel: a canvas of points, an overlay canvas for the hover ring, its own zoom and pan --------------
  function Panel(index, spec, section) {
    const plot = section.querySelector(".plot");
    const canvas = section.querySelector("canvas.points"), overlay = section.querySelector("canvas.overlay");
    const ctx = canvas.getContext("2d"), octx = overlay.getContext("2d");
    const x = Float32Array.from(spec.x), y = new Float32Array(N);
    for (let i = 0; i < N; i++) y[i] = 1 - spec.y[i];  // y up on screen
    const view = { a: 1, bx: 0, by: 0, fitA: 1, touched: false };  // screen = b + a * world (CSS px in the canvas)
    let width = 0, height = 0, pending = false, drawn = 0;

    // grid bucket index over the unit square: the hover search looks only at the cells near the cursor
    const G = Math.max(1, Math.min(256, Math.ceil(Math.sqrt(N / 4))));
    const cellOf = (v) => Math.min(G - 1, Math.max(0, Math.floor(v * G)));
    const start = new Int32Array(G * G + 1), order = new Int32Array(N), cell = new Int32Array(N);
    for (let i = 0; i < N; i++) { cell[i] = cellOf(y[i]) * G + cellOf(x[i]); start[cell[i] + 1]++; }
    for (let c = 0; c < G * G; c++) start[c + 1] += start[c];
    const next = start.slice(0, G * G);
    for (let i = 0; i < N; i++) order[next[cell[i]]++] = i;

    function resize() {
      const w = plot.clientWidth, h = plot.clientHeight, dpr = window.devicePixelRatio || 1;
      if (w === width && h === height) return;
      width = w; height = h;
      for (const c of [canvas, overlay]) { c.width = Math.max(1, Math.round(w * dpr)); c.height = Math.max(1, Math.round(h * dpr)); }
      const fitA = Math.max(Math.min(w, h) * 0.92, 1);
      if (!view.touched) reset(); else { view.fitA = fitA; draw(); }
    }
    function reset() {
      const s = Math.max(Math.min(width, height) * 0.92, 1);
      view.a = s; view.fitA = s; view.bx = (width - s) / 2; view.by = (height - s) / 2; view.touched = false;
      draw();
    }
    function zoomAt(factor, cx, cy) {
      const a = Math.min(Math.max(view.a * factor, view.fitA * 0.25), view.fitA * 200);
      const r = a / view.a;
      view.bx = cx - (cx - view.bx) * r; view.by = cy - (cy - view.by) * r; view.a = a; view.touched = true;
      requestDraw();
    }
    function radius() { return Math.min(8, (N > 4000 ? 2 : N > 500 ? 3 : 4) * Math.sqrt(Math.max(1, view.a / view.fitA))); }
    function requestDraw() {
      if (pending) return;
      pending = true;
      requestAnimationFrame(() => { pending = false; draw(); });
    }
    function draw() {
      const dpr = canvas.width / Math.max(width, 1);
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.clearRect(0, 0, width, height);
      const r = radius(), a = view.a, bx = view.bx, by = view.by, tau = 2 * Math.PI;
      ctx.globalAlpha = 0.82;
      drawn = 0;
      for (let l = 0; l < L; l++) {
        if (!visible[l]) continue;
        const list = members[l];
        ctx.fillStyle = colour(l);
        ctx.beginPath();
        for (let k = 0; k < list.length; k++) {
          const i = list[k], sx = bx + a * x[i], sy = by + a * y[i];
          if (sx < -r || sy < -r || sx > width + r || sy > height + r) continue;
          ctx.moveTo(sx + r, sy);
          ctx.arc(sx, sy, r, 0, tau);
          drawn++;
        }
        ctx.fill();
      }
      ctx.globalAlpha = 1;
      drawRing();
    }
    function drawRing() {
      const dpr = overlay.width / Math.max(width, 1);
      octx.setTransform(dpr, 0, 0, dpr, 0, 0);
      octx.clearRect(0, 0, width, height);
      if (hovered < 0 || !visible[codes[hovered]]) return;
      const sx = view.bx + view.a * x[hovered], sy = view.by + view.a * y[hovered], r = radius() + 3;
      octx.lineWidth = 3; octx.strokeStyle = "rgba(255, 255, 255, 0.95)";
      octx.beginPath(); octx.arc(sx, sy, r, 0, 2 * Math.PI); octx.stroke();
      octx.lineWidth = 1.5; octx.strokeStyle = hoveredPanel === api ? "#111" : "#555";
      octx.beginPath(); octx.arc(sx, sy, r, 0, 2 * Math.PI); octx.stroke();
    }
    function nearest(mx, my) {
      const a = view.a, wx = (mx - view.bx) / a, wy = (my - view.by) / a, R = HOVER_RADIUS / a;
      const c0 = cellOf(wx - R), c1 = cellOf(wx + R), r0 = cellOf(wy - R), r1 = cellOf(wy + R);
      let best = -1, bestD = HOVER_RADIUS * HOVER_RADIUS;
      for (let row = r0; row <= r1; row++) {
        for (let c = row * G + c0, end = row * G + c1; c <= end; c++) {
          for (let k = start[c]; k < start[c + 1]; k++) {
            const i = order[k];
            if (!visible[codes[i]]) continue;
            const dx = (x[i] - wx) * a, dy = (y[i] - wy) * a, d = dx * dx + dy * dy;
            if (d <= bestD) { bestD = d; best = i; }
          }
        }
      }
      return best;
    }
    function local(e) { const r = canvas.getBoundingClientRect(); return [e.clientX - r.left, e.clientY - r.top]; }

    let drag = null;
    canvas.addEventListener("wheel", (e) => {
      e.preventDefault();
      const step = e.deltaMode === 1 ? 16 : e.deltaMode === 2 ? 400 : 1;
      const [mx, my] = local(e);
      zoomAt(Math.exp(-e.deltaY * step * 0.0015), mx, my);
      hover(e);
    }, { passive: false });
    canvas.addEventListener("pointerdown", (e) => {
      if (e.button !== 0) return;
      drag = { x: e.clientX, y: e.clientY, bx: view.bx, by: view.by, id: e.pointerId };
      canvas.setPointerCapture(e.pointerId);
      plot.classList.add("dragging");
    });
    canvas.addEventListener("pointermove", (e) => {
      if (drag) {
        view.bx = drag.bx + e.clientX - drag.x; view.by = drag.by + e.clientY - drag.y; view.touched = true;
        setHover(-1, null);
        requestDraw();
      } else {
        hover(e);
      }
    });
    const endDrag = (e) => {
      if (!drag) return;
      if (canvas.hasPointerCapture(drag.id)) canvas.releasePointerCapture(drag.id);
      drag = null;
      plot.classList.remove("dragging");
      hover(e);
    };
    canvas.addEventListener("pointerup", endDrag);
    canvas.addEventListener("pointercancel", endDrag);
    canvas.addEventListener("pointerleave", () => { if (!drag && hoveredPanel === api) setHover(-1, null); });
    canvas.addEventListener("dblclick", () => reset());
    section.querySelector("button.reset").addEventListener("click", () => reset());

    function hover(e) {
      const [mx, my] = local(e);
      const i = (mx >= 0 && my >= 0 && mx <= width && my <= height) ? nearest(mx, my) : -1;
      setHover(i, i < 0 ? null : api, e.clientX, e.clientY);
    }

    const api = {
      name: spec.name,
      visibleCount: visibleCount,
      toScreen(i) { const r = canvas.getBoundingClientRect(); return [r.left + view.bx + view.a * x[i], r.top + view.by + view.a * y[i]]; },
      hovered() { return hoveredPanel === api ? hovered : -1; },
      view() { return { a: view.a, bx: view.bx, by: view.by, fit: view.fitA, touched: view.touched }; },
      drawnPoints() { return drawn; },
      zoomAt: zoomAt,
      reset: reset,
    };
    api._ = { spec: spec, resize: resize, draw: draw, drawRing: drawRing, requestDraw: requestDraw, plot: plot };
    resize();
    if (window.ResizeObserver) new ResizeObserver(resize).observe(plot);
    return api;
  }

  // ---- the hover card ----------------------------------------------------------------------------------------
  const card = $("card"), thumb = $("card-thumb");
  const sprite = data.sprite;
  const hook = { ready: false, n: N, labels: labelNames.slice(), hasSprite: !!sprite, spriteLoaded: false, spriteError: false, panels: panels };
  if (sprite) {
    const url = 'url("' + encodeURI(sprite.file) + '")';
    const scale = Math.max(sprite.w, sprite.h) >= 96 ? 96 / Math.max(sprite.w, sprite.h) : Math.floor(96 / Math.max(sprite.w, sprite.h));
    thumb.style.width = sprite.w * scale + "px";
    thumb.style.height = sprite.h * scale + "px";
    thumb.style.backgroundImage = url;
    thumb.style.backgroundSize = sprite.cols * sprite.w * scale + "px " + sprite.rows * sprite.h * scale + "px";
    thumb.dataset.scale = String(scale);
    const probe = new Image();
    probe.onload = () => { hook.spriteLoaded = true; hook.spriteSize = [probe.naturalWidth, probe.naturalHeight]; };
    probe.onerror = () => { hook.spriteError = true; };
    probe.src = encodeURI(sprite.file);
  } else {
    thumb.classList.add("none");
  }

  function setHover(i, panel, clientX, clientY) {
    const changed = i !== hovered || panel !== hoveredPanel;
    hovered = i; hoveredPanel = panel;
    if (changed) for (const p of panels) p._.drawRing();
    if (i < 0) { card.hidden = true; return; }
    if (changed) fillCard(i, panel);
    card.hidden = false;
    const w = card.offsetWidth, h = card.offsetHeight, gap = 16;
    let left = clientX + gap, top = clientY + gap;
    if (left + w > window.innerWidth - 4) left = Math.max(4, clientX - gap - w);
    if (top + h > window.innerHeight - 4) top = Math.max(4, clientY - gap - h);
    card.style.left = left + "px"; card.style.top = top + "px";
  }
  function fillCard(i, panel) {
    const l = codes[i];
    $("card-label").textContent = data.label ? labelNames[l] : "";
    $("card-label").style.color = colour(l);
    $("card-index").textContent = "#" + data.indices[i];
    $("card-panel").textContent = panel.name;
    card.dataset.point = String(i);
    card.dataset.index = String(data.indices[i]);
    if (sprite) {
      const s = Number(thumb.dataset.scale), r = Math.floor(i / sprite.cols), c = i % sprite.cols;
      thumb.style.backgroundPosition = (-c * sprite.w * s) + "px " + (-r * sprite.h * s) + "px";
    }
    const table = $("card-channels");
    table.replaceChildren();
    const top = panel._.spec.top[i] || [];
    if (top.length) {
      const caption = document.createElement("caption");
      caption.textContent = "strongest channels";
      table.appendChild(caption);
    }
    for (const [channel, value] of top) {
      const row = table.insertRow();
      const a = row.insertCell(), b = row.insertCell();
      a.textContent = "ch " + channel;
      b.textContent = value === null ? "\u2014" : Number(value).toPrecision(3);
      b.className = "v";
    }
  }

  // ---- the legend: one checkbox per label, filtering every panel ------------------------------------------------
  const items = $("legend-items");
  const boxes = [];
  for (let l = 0; l < L; l++) {
    const item = document.createElement("label");
    item.className = "item";
    const box = document.createElement("input");
    box.type = "checkbox"; box.checked = true; box.className = "label-toggle"; box.dataset.label = labelNames[l];
    const swatch = document.createElement("span");
    swatch.className = "swatch"; swatch.style.background = colour(l);
    const name = document.createElement("span");
    name.className = "name"; name.textContent = labelNames[l]; name.title = labelNames[l];
    const count = document.createElement("span");
    count.className = "count"; count.textContent = String(counts[l]);
    item.append(box, swatch, name, count);
    box.addEventListener("change", () => setVisible(l, box.checked));
    items.appendChild(item);
    boxes.push(box);
  }
  function setVisible(l, on) {
    visible[l] = on ? 1 : 0;
    boxes[l].checked = !!on;
    boxes[l].parentElement.classList.toggle("off", !on);
    changedVisibility();
  }
  function changedVisibility() {
    if (hovered >= 0 && !visible[codes[hovered]]) setHover(-1, null);
    for (const p of panels) p._.draw();
    $("visible-count").textContent = visibleCount() + " of " + N + " shown";
  }
  function setAll(on) {
    for (let l = 0; l < L; l++) { visible[l] = on ? 1 : 0; boxes[l].checked = on; boxes[l].parentElement.classList.toggle("off", !on); }
    changedVisibility();
  }
  $("show-all").addEventListener("click", () => setAll(true));
  $("show-none").addEventListener("click", () => setAll(false));
  $("reset-all").addEventListener("click", () => { for (const p of panels) p.reset(); });

  document.querySelectorAll("section.panel").forEach((section) => {
    const index = Number(section.dataset.panel);
    panels.push(Panel(index, data.panels[index], section));
  });
  $("visible-count").textContent = visibleCount() + " of " + N + " shown";
  hook.setVisible = (name, on) => { const l = labelNames.indexOf(name); if (l >= 0) setVisible(l, on); return l >= 0; };
  hook.visibleCount = visibleCount;
  hook.ready = true;
  window.nnfeatScatter = hook;
})();
