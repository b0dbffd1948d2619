(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("atlas-data").textContent);
  const $ = (id) => document.getElementById(id);
  const grid = data.grid, W = data.width, H = data.height, cellW = W / grid, cellH = H / grid;
  const cells = new Map();
  for (const c of data.cells) cells.set(c.row * grid + c.col, c);

  const viewport = $("viewport"), stage = $("stage"), mosaic = $("mosaic"), shade = $("shade"), frames = $("class-frames");
  const FRAME = 16;  // class-frames canvas pixels per cell
  const hoverBox = $("hover-box"), pinBox = $("pin-box"), statusLine = $("status"), legend = $("legend");
  const select = $("class-select"), zoomLevel = $("zoom-level");
  const view = { scale: 1, tx: 0, ty: 0, fit: 1, touched: false };
  let pinned = null, shown = null, drag = null, lastPointer = null;

  stage.style.width = W + "px";
  stage.style.height = H + "px";
  shade.width = grid;
  shade.height = grid;
  frames.width = grid * FRAME;
  frames.height = grid * FRAME;

  function classColour(index, alpha) {
    const hue = (index * 137.508 + 12) % 360;
    return "hsla(" + hue.toFixed(1) + ", 72%, 48%, " + alpha + ")";
  }
  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function fmt(x, digits) { return (x === null || x === undefined) ? "\u2014" : Number(x).toFixed(digits); }

  // ---- view transform: screen = translate(tx, ty) + scale * mosaic -------------------------------------------
  function apply() {
    stage.style.transform = "translate(" + view.tx + "px, " + view.ty + "px) scale(" + view.scale + ")";
    zoomLevel.textContent = Math.round(view.scale * 100) + "%";
    const border = Math.max(2 / view.scale, 0.5) + "px";
    hoverBox.style.borderWidth = border;
    pinBox.style.borderWidth = border;
  }
  function fit() {
    const r = viewport.getBoundingClientRect();
    const s = Math.max(Math.min(r.width / W, r.height / H) * 0.96, 1e-3);
    view.fit = s; view.scale = s;
    view.tx = (r.width - W * s) / 2; view.ty = (r.height - H * s) / 2;
    apply();
  }
  function zoomAt(factor, cx, cy) {
    const s = Math.min(Math.max(view.scale * factor, view.fit * 0.25), Math.max(view.fit * 64, 8));
    const k = s / view.scale;
    view.tx = cx - (cx - view.tx) * k; view.ty = cy - (cy - view.ty) * k; view.scale = s;
    view.touched = true;
    apply();
  }
  function zoomCentre(factor) {
    const r = viewport.getBoundingClientRect();
    zoomAt(factor, r.width / 2, r.height / 2);
  }
  function cellAt(clientX, clientY) {
    const r = viewport.getBoundingClientRect();
    const x = (clientX - r.left - view.tx) / view.scale, y = (clientY - r.top - view.ty) / view.scale;
    if (x < 0 || y < 0 || x >= W || y >= H) return null;
    const row = Math.min(Math.floor(y / cellH), grid - 1), col = Math.min(Math.floor(x / cellW), grid - 1);
    return { row: row, col: col, cell: cells.get(row * grid + col) || null };
  }
  function placeBox(box, row, col) {
    box.style.left = col * cellW + "px"; box.style.top = row * cellH + "px";
    box.style.width = cellW + "px"; box.style.height = cellH + "px";
    box.hidden = false;
  }

  // ---- hover, pin, details -----------------------------------------------------------------------------------
  function setStatus(hit) {
    if (!hit) { statusLine.textContent = ""; return; }
    let text = "row " + hit.row + ", col " + hit.col;
    if (hit.cell) {
      text += " \u00b7 " + hit.cell.count + " samples";
      if (hit.cell.top_class) text += " \u00b7 " + hit.cell.top_class.name;
    } else {
      text += " \u00b7 empty";
    }
    statusLine.textContent = text + " \u00b7 zoom " + Math.round(view.scale * 100) + "%";
  }
  function updateHover(clientX, clientY) {
    const hit = cellAt(clientX, clientY);
    setStatus(hit);
    if (!hit) { hoverBox.hidden = true; return; }
    placeBox(hoverBox, hit.row, hit.col);
    hoverBox.classList.toggle("empty", !hit.cell);
    if (hit.cell && !pinned) showDetails(hit.cell);
  }
  function togglePin(clientX, clientY) {
    const hit = cellAt(clientX, clientY);
    if (!hit || !hit.cell || hit.cell === pinned) { unpin(); if (hit && hit.cell) showDetails(hit.cell); return; }
    pinned = hit.cell;
    placeBox(pinBox, hit.row, hit.col);
    showDetails(hit.cell);
  }
  function unpin() {
    pinned = null; pinBox.hidden = true;
    if (shown) showDetails(shown);
  }

  function bars(container, entries, options) {
    container.replaceChildren();
    if (!entries.length) { container.appendChild(el("div", "muted", options.empty)); return; }
    const scale = Math.max.apply(null, entries.map((e) => Math.abs(e[1]))) || 1;
    for (const [name, value] of entries) {
      const row = el("div", "bar");
      const label = el("span", "name" + (name === options.highlight ? " top" : ""), name);
      label.title = name;
      const track = el("span", "track"), fill = el("span", "fill" + (value < 0 ? " neg" : ""));
      fill.style.width = (100 * Math.abs(value) / scale).toFixed(1) + "%";
      track.appendChild(fill);
      row.append(label, track, el("span", "num", options.format(value)));
      container.appendChild(row);
    }
  }
  function drawIcon(cell) {
    const canvas = $("detail-icon"), ctx = canvas.getContext("2d");
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, canvas.width, canvas.height);
    if (!mosaic.complete || !mosaic.naturalWidth) return;
    const sx = mosaic.naturalWidth / W, sy = mosaic.naturalHeight / H;
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(mosaic, cell.col * cellW * sx, cell.row * cellH * sy, cellW * sx, cellH * sy, 0, 0, canvas.width, canvas.height);
  }
  function showDetails(cell) {
    shown = cell;
    $("details-empty").hidden = true;
    $("details-body").hidden = false;
    const details = $("details");
    details.dataset.row = cell.row; details.dataset.col = cell.col;
    const title = $("detail-title");
    title.replaceChildren(document.createTextNode("Cell row " + cell.row + ", col " + cell.col));
    if (pinned === cell) title.appendChild(el("span", "pinned", "pinned"));
    drawIcon(cell);
    $("detail-count").textContent = String(cell.count);
    const cls = $("detail-class");
    cls.replaceChildren();
    if (cell.top_class) {
      const swatch = el("span", "swatch");
      swatch.style.background = classColour(cell.top_class.index, 1);
      cls.append(swatch, document.createTextNode(" " + cell.top_class.name));
    } else {
      cls.textContent = "\u2014";
    }
    $("detail-cosine").textContent = fmt(cell.cosine, 3);
    $("detail-position").textContent = cell.position ? "[" + fmt(cell.position[0], 3) + ", " + fmt(cell.position[1], 3) + "]" : "\u2014";
    $("detail-icon-path").textContent = cell.icon || "\u2014";

    const labels = Object.entries(cell.labels || {}).sort((a, b) => b[1] - a[1]);
    bars($("detail-labels"), labels, { empty: "no labels", highlight: cell.top_class && cell.top_class.name, format: String });

    const attrSection = $("attribution-section");
    attrSection.hidden = !cell.attribution;
    if (cell.attribution) {
      const top = cell.attribution.map((v, i) => [data.classes[i] || "class " + i, v])
        .sort((a, b) => Math.abs(b[1]) - Math.abs(a[1])).slice(0, 6);
      bars($("detail-attribution"), top, { empty: "", highlight: cell.top_class && cell.top_class.name, format: (v) => v.toPrecision(3) });
    }

    const members = $("detail-members");
    members.replaceChildren();
    const listed = cell.members.slice(0, data.max_members);
    $("detail-member-count").textContent = "(" + cell.members.length + ")";
    for (const index of listed) {
      const url = data.thumbs[String(index)];
      if (url) {
        const image = el("img");
        image.src = url; image.alt = "sample " + index; image.title = "dataset index " + index;
        members.appendChild(image);
      } else {
        members.appendChild(el("span", "chip", "#" + index));
      }
    }
    if (cell.members.length > listed.length) members.appendChild(el("span", "muted", "+" + (cell.members.length - listed.length) + " more"));
    if (!cell.members.length) members.appendChild(el("span", "muted", "no members recorded"));
  }

  // ---- class shading: overlay canvas with one pixel per cell -------------------------------------------------
  function classScores(index) {
    // score in [0, 1] per cell: attribution to the class relative to the strongest cell, else top-class match
    const scores = new Map();
    let best = 0;
    if (data.has_attribution) {
      for (const c of data.cells) if (c.attribution) best = Math.max(best, c.attribution[index]);
      for (const c of data.cells) {
        const a = c.attribution ? c.attribution[index] : 0;
        scores.set(c, best > 0 ? Math.max(a, 0) / best : 0);
      }
    } else {
      for (const c of data.cells) scores.set(c, c.top_class && c.top_class.index === index ? 1 : 0);
    }
    return { scores: scores, best: best };
  }
  function drawShade() {
    const ctx = shade.getContext("2d"), frameCtx = frames.getContext("2d");
    ctx.clearRect(0, 0, grid, grid);
    frameCtx.clearRect(0, 0, frames.width, frames.height);
    const mode = select.value;
    shade.dataset.mode = mode;
    legend.replaceChildren();
    legend.hidden = mode === "";
    if (mode === "") return;
    if (mode === "*") {
      const present = new Map();
      for (const c of data.cells) {
        if (!c.top_class) continue;
        frameCtx.fillStyle = classColour(c.top_class.index, 1);
        frameCtx.fillRect(c.col * FRAME, c.row * FRAME, FRAME, FRAME);
        frameCtx.clearRect(c.col * FRAME + 1, c.row * FRAME + 1, FRAME - 2, FRAME - 2);
        present.set(c.top_class.index, (present.get(c.top_class.index) || 0) + 1);
      }
      legend.appendChild(el("div", "muted", "top class of each cell (click to focus)"));
      for (const [index, n] of [...present.entries()].sort((a, b) => b[1] - a[1])) {
        const item = el("div", "item");
        const swatch = el("span", "swatch");
        swatch.style.background = classColour(index, 1);
        item.append(swatch, document.createTextNode(data.classes[index] + " (" + n + ")"));
        item.addEventListener("click", () => { select.value = String(index); drawShade(); });
        legend.appendChild(item);
      }
      return;
    }
    const index = Number(mode);
    const shading = classScores(index);
    let strong = 0;
    for (const [c, score] of shading.scores) {
      if (score >= 0.5) strong += 1;
      ctx.fillStyle = "rgba(255, 255, 255, " + (0.85 * (1 - score)).toFixed(3) + ")";
      ctx.fillRect(c.col, c.row, 1, 1);
    }
    const name = data.classes[index];
    const head = el("div");
    const swatch = el("span", "swatch");
    swatch.style.background = classColour(index, 1);
    head.append(swatch, document.createTextNode(" " + (data.has_attribution ? "attribution to " : "top class: ") + name));
    legend.appendChild(head);
    if (data.has_attribution) {
      legend.appendChild(el("div", "ramp"));
      const ends = el("div", "ends");
      ends.append(el("span", null, "\u2264 0 (faded)"), el("span", null, fmt(shading.best, 3) + " (clear)"));
      legend.appendChild(ends);
      legend.appendChild(el("div", "muted", strong + " of " + data.cells.length + " cells \u2265 50% of the strongest"));
    } else {
      legend.appendChild(el("div", "muted", strong + " of " + data.cells.length + " cells; the others are faded"));
    }
  }
  data.classes.forEach((name, index) => {
    const option = el("option", null, name);
    option.value = String(index);
    select.appendChild(option);
  });
  select.addEventListener("change", drawShade);

  // ---- input ---------------------------------------------------------------------------------------------------
  viewport.addEventListener("pointerdown", (e) => {
    if (e.button !== 0) return;
    viewport.focus({ preventScroll: true });
    drag = { x: e.clientX, y: e.clientY, tx: view.tx, ty: view.ty, moved: false };
    viewport.setPointerCapture(e.pointerId);
  });
  viewport.addEventListener("pointermove", (e) => {
    lastPointer = { x: e.clientX, y: e.clientY };
    if (drag) {
      const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
      if (!drag.moved && Math.hypot(dx, dy) > 3) { drag.moved = true; viewport.classList.add("dragging"); }
      if (drag.moved) {
        view.tx = drag.tx + dx; view.ty = drag.ty + dy; view.touched = true;
        apply();
        return;
      }
    }
    updateHover(e.clientX, e.clientY);
  });
  function endDrag(e, cancelled) {
    if (!drag) return;
    const moved = drag.moved;
    drag = null;
    viewport.classList.remove("dragging");
    if (!moved && !cancelled) togglePin(e.clientX, e.clientY);
  }
  viewport.addEventListener("pointerup", (e) => endDrag(e, false));
  viewport.addEventListener("pointercancel", (e) => endDrag(e, true));
  viewport.addEventListener("pointerleave", () => { if (!drag) { hoverBox.hidden = true; setStatus(null); } });
  viewport.addEventListener("wheel", (e) => {
    e.preventDefault();
    const unit = e.deltaMode === 1 ? 16 : e.deltaMode === 2 ? 400 : 1;
    const r = viewport.getBoundingClientRect();
    zoomAt(Math.exp(-e.deltaY * unit * 0.0015), e.clientX - r.left, e.clientY - r.top);
    updateHover(e.clientX, e.clientY);
  }, { passive: false });
  $("zoom-in").addEventListener("click", () => zoomCentre(1.5));
  $("zoom-out").addEventListener("click", () => zoomCentre(1 / 1.5));
  $("zoom-fit").addEventListener("click", () => { view.touched = false; fit(); });
  document.addEventListener("keydown", (e) => {
    if (e.target === select || e.ctrlKey || e.metaKey || e.altKey) return;
    const step = 60;
    if (e.key === "+" || e.key === "=") zoomCentre(1.25);
    else if (e.key === "-" || e.key === "_") zoomCentre(0.8);
    else if (e.key === "0") { view.touched = false; fit(); }
    else if (e.key === "Escape") unpin();
    else if (e.key.startsWith("Arrow")) {
      view.tx += e.key === "ArrowLeft" ? step : e.key === "ArrowRight" ? -step : 0;
      view.ty += e.key === "ArrowUp" ? step : e.key === "ArrowDown" ? -step : 0;
      view.touched = true;
      apply();
    } else return;
    e.preventDefault();
    if (lastPointer) updateHover(lastPointer.x, lastPointer.y);
  });
  new ResizeObserver(() => { if (!view.touched) fit(); }).observe(viewport);
  // ---- density: each icon scaled by sqrt(count / max count), at least MIN_DENSITY of its cell ----
  // (the "scale by density" view of Carter et al., "Activation Atlas", Distill 2019)
  const densityBox = $("density"), densityCanvas = $("density-canvas"), MIN_DENSITY = 0.25;
  const maxCount = Math.max(1, ...data.cells.map((c) => c.count || 0));
  function densityScale(cell) { return Math.max(MIN_DENSITY, Math.sqrt((cell.count || 0) / maxCount)); }
  function drawDensity() {
    densityCanvas.hidden = !densityBox.checked;
    if (!densityBox.checked || !mosaic.complete || !mosaic.naturalWidth) return;
    densityCanvas.width = mosaic.naturalWidth; densityCanvas.height = mosaic.naturalHeight;
    const ctx = densityCanvas.getContext("2d");
    const sx = mosaic.naturalWidth / W, sy = mosaic.naturalHeight / H, w = cellW * sx, h = cellH * sy;
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, densityCanvas.width, densityCanvas.height);
    ctx.imageSmoothingEnabled = true;
    for (const cell of data.cells) {
      const k = densityScale(cell), x = cell.col * w, y = cell.row * h;
      ctx.drawImage(mosaic, x, y, w, h, x + w * (1 - k) / 2, y + h * (1 - k) / 2, w * k, h * k);
    }
  }
  densityBox.addEventListener("change", drawDensity);
  mosaic.addEventListener("load", () => { if (shown) drawIcon(shown); drawDensity(); });

  fit();
  drawShade();
  drawDensity();
  // for scripting and tests: the view state and the current cell (read-only use intended)
  window.atlasViewer = { data: data, view: view, fit: fit, zoomAt: zoomAt, shown: () => shown, pinned: () => pinned,
                         densityScale: densityScale };
})();
