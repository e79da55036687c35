// kernelflow DAG widget: draws what the kernel sends (graph, layout, statuses).
// No dependencies: saved widget state carries this file into every notebook.
const NS = "http://www.w3.org/2000/svg";
const FINAL = ["succeeded", "failed", "timed_out", "skipped"];

function svg(tag, attrs, parent) {
  const e = document.createElementNS(NS, tag);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (parent) parent.appendChild(e);
  return e;
}

function h(tag, cls, text, parent) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}

// A small layered layout for when the kernel has no Graphviz: longest-path
// layers left to right, a few barycentre sweeps to reduce crossings.
function layoutInBrowser(graph) {
  const ids = graph.nodes.map((n) => n[0]);
  const preds = {}, succs = {};
  ids.forEach((id) => { preds[id] = []; succs[id] = []; });
  graph.edges.forEach(([a, b]) => { if (a in preds && b in preds) { preds[b].push(a); succs[a].push(b); } });
  const layer = {};
  const visit = (id, seen) => {
    if (id in layer) return layer[id];
    if (seen.has(id)) return 0;
    seen.add(id);
    layer[id] = preds[id].length ? 1 + Math.max(...preds[id].map((p) => visit(p, seen))) : 0;
    return layer[id];
  };
  ids.forEach((id) => visit(id, new Set()));
  const layers = [];
  ids.forEach((id) => (layers[layer[id]] = layers[layer[id]] || []).push(id));
  const pos = {};
  const order = () => layers.forEach((l) => l.forEach((id, i) => (pos[id] = i)));
  order();
  for (let sweep = 0; sweep < 4; sweep++) {
    layers.forEach((l, i) => {
      if (!i) return;
      const bary = (id) => { const p = preds[id]; return p.length ? p.reduce((s, q) => s + pos[q], 0) / p.length : pos[id]; };
      l.sort((a, b) => bary(a) - bary(b));
      order();
    });
  }
  const W = (id) => Math.max(54, 7 * id.length + 18), H = 22, GAPX = 36, GAPY = 14;
  const nodes = {};
  let x = 6, height = 0;
  layers.forEach((l) => {
    const w = Math.max(...l.map(W));
    l.forEach((id, i) => { nodes[id] = [x + w / 2, 6 + i * (H + GAPY) + H / 2, W(id), H]; });
    height = Math.max(height, l.length * (H + GAPY));
    x += w + GAPX;
  });
  const edges = graph.edges.filter(([a, b]) => nodes[a] && nodes[b]).map(([a, b]) => {
    const [ax, ay, aw] = nodes[a], [bx, by, bw] = nodes[b];
    const x1 = ax + aw / 2, x2 = bx - bw / 2, mx = (x1 + x2) / 2;
    return [a, b, `M${x1},${ay}C${mx},${ay} ${mx},${by} ${x2},${by}`];
  });
  return { width: x, height: height + 6, nodes, edges };
}

function fmtSeconds(s) {
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  return m < 60 ? `${m} min ${Math.round(s % 60)} s` : `${Math.floor(m / 60)} h ${m % 60} min`;
}

function render({ model, el }) {
  const root = h("div", "kf-dag", null, el);
  const header = h("div", "kf-dag-header", null, root);
  const scroller = h("div", "kf-dag-graph", null, root);
  const panel = h("div", "kf-details", null, root);
  panel.hidden = true;
  let nodes = {};
  let ticker = null;

  const colours = (status) => (model.get("palette") || {})[status] || ["#f4f4f5", "#a1a1aa"];

  function drawGraph() {
    scroller.textContent = "";
    nodes = {};
    const graph = model.get("graph") || { nodes: [], edges: [] };
    const lay = (model.get("graph_layout") || {}).nodes ? model.get("graph_layout") : layoutInBrowser(graph);
    const s = svg("svg", { width: lay.width + 8, height: lay.height + 8, viewBox: `-4 -4 ${lay.width + 8} ${lay.height + 8}`, class: "kf-dag-svg" }, scroller);
    svg("defs", {}, s).innerHTML = '<marker id="kf-arrow" viewBox="0 0 8 8" refX="7" refY="4" markerWidth="7" markerHeight="7" orient="auto"><path d="M0,0L8,4L0,8z" fill="#71717a"/></marker>';
    const kinds = {};
    graph.edges.forEach(([a, b, k]) => (kinds[a + "\u0000" + b] = k));
    lay.edges.forEach(([a, b, d]) => {
      const dashed = kinds[a + "\u0000" + b] === "after";
      svg("path", { d, class: "kf-edge", fill: "none", stroke: "#71717a", "marker-end": "url(#kf-arrow)", "stroke-dasharray": dashed ? "4 3" : "" }, s);
    });
    graph.nodes.forEach(([id, kind]) => {
      const box = lay.nodes[id];
      if (!box) return;
      const [cx, cy, w, hgt] = box;
      const g = svg("g", { class: "kf-node", "data-task": id, "data-kind": kind, transform: `translate(${cx - w / 2},${cy - hgt / 2})` }, s);
      svg("rect", { width: w, height: hgt, rx: 5 }, g);
      const t = svg("text", { x: w / 2, y: hgt / 2 + 4, "text-anchor": "middle" }, g);
      t.textContent = id;
      svg("title", {}, g);
      g.addEventListener("click", () => select(id));
      nodes[id] = g;
    });
    paint();
  }

  function paint() {
    const status = model.get("status") || {};
    const tasks = model.get("tasks") || {};
    for (const id in nodes) {
      const st = status[id] || "pending";
      const [fill, stroke] = colours(st);
      const g = nodes[id];
      g.setAttribute("data-status", st);
      g.firstChild.setAttribute("fill", fill);
      g.firstChild.setAttribute("stroke", stroke);
      const info = tasks[id] || [];
      g.lastChild.textContent = `${id}: ${st}` + (info[0] > 1 ? ` (attempt ${info[0]})` : "") +
        (info[1] != null ? ` · ${info[1].toFixed(0)} ms` : "") + (info[2] ? `\n${info[2]}` : "");
    }
    drawHeader();
    if (!panel.hidden) drawDetails();
  }

  function drawHeader() {
    const status = model.get("status") || {};
    const total = (model.get("graph").nodes || []).length;
    const counts = {};
    Object.values(status).forEach((s) => (counts[s] = (counts[s] || 0) + 1));
    const known = Object.values(counts).reduce((a, b) => a + b, 0);
    if (total > known) counts.pending = (counts.pending || 0) + total - known;
    const runStatus = model.get("run_status");
    root.setAttribute("data-run-status", runStatus || "");
    header.textContent = "";
    h("b", "kf-dag-name", model.get("workflow"), header);
    if (model.get("run_id")) {
      h("code", "kf-dag-run", model.get("run_id"), header);
      h("span", `kf-dag-status kf-${runStatus}`, runStatus, header);
    } else {
      h("span", "kf-dag-meta", `${total} tasks · version ${model.get("version")}`, header);
    }
    for (const st of Object.keys(counts)) {
      const c = h("span", "kf-count", `${counts[st]} ${st}`, header);
      c.setAttribute("data-status", st);
      c.style.color = colours(st)[1];
    }
    const done = FINAL.reduce((n, s) => n + (counts[s] || 0), 0);
    if (model.get("run_id")) h("span", "kf-dag-progress", `${done}/${total} done`, header);
    const elapsed = h("span", "kf-dag-elapsed", "", header);
    const tick = () => {
      const start = model.get("started_at"), end = model.get("ended_at");
      if (start) elapsed.textContent = fmtSeconds(Math.max(0, (end || Date.now() / 1000) - start));
    };
    tick();
    clearInterval(ticker);
    ticker = ["running", "retrying"].includes(runStatus) ? setInterval(tick, 1000) : null;
  }

  function select(id) {
    panel.hidden = false;
    panel.setAttribute("data-task", id);
    for (const k in nodes) nodes[k].classList.toggle("kf-selected", k === id);
    model.set("selected", id);
    model.save_changes();
    drawDetails();
  }

  function section(title, cls, parent) {
    const box = h("div", `kf-details-section ${cls}`, null, parent);
    h("div", "kf-details-title", title, box);
    return box;
  }

  function drawDetails() {
    const id = panel.getAttribute("data-task");
    const d = model.get("details") || {};
    const info = (model.get("tasks") || {})[id] || [];
    const st = (model.get("status") || {})[id] || "pending";
    panel.textContent = "";
    const top = h("div", "kf-details-head", null, panel);
    h("b", null, id, top);
    h("span", `kf-details-status kf-${st}`, st, top);
    const close = h("button", "kf-details-close", "×", top);
    close.title = "close";
    close.onclick = () => { panel.hidden = true; for (const k in nodes) nodes[k].classList.remove("kf-selected"); };
    if (d.task !== id) {
      h("div", "kf-details-loading", info[2] || "loading details… (the kernel answers when it is idle)", panel);
      return;
    }
    if (d.problem) h("div", "kf-details-error", d.problem, panel);
    if (d.options) h("div", "kf-details-options", d.options, panel);
    const inputs = section("inputs", "kf-details-inputs", panel);
    const names = Object.keys(d.inputs || {});
    if (!names.length) h("div", "kf-empty", "none", inputs);
    names.forEach((n) => { h("div", "kf-input-name", n, inputs); h("div", "kf-preview", null, inputs).innerHTML = d.inputs[n]; });
    if (d.output != null) section("output", "kf-details-output", panel).insertAdjacentHTML("beforeend", d.output);
    if (d.reason) h("div", "kf-details-reason", d.reason, section("reason", "", panel));
    if (d.error) h("pre", null, d.error, section("traceback", "kf-details-error", panel));
    const logs = section("logs", "kf-details-logs", panel);
    if (!(d.logs || []).length) h("div", "kf-empty", "nothing printed", logs);
    (d.logs || []).forEach(([a, text]) => h("pre", null, (d.logs.length > 1 ? `attempt ${a}:\n` : "") + text, logs));
    if ((d.files || []).length) {
      // Paths, not links: the store lives in a hidden folder, which Jupyter's file server refuses by default.
      const files = section("files", "kf-details-files", panel);
      d.files.forEach(([a, kind, path]) => {
        const row = h("div", "kf-file", `${kind === "notebook" ? "executed notebook" : kind} (attempt ${a}): `, files);
        h("code", null, path, row).title = path;
      });
    }
    const attempts = section("attempts", "kf-details-attempts", panel);
    const table = h("table", null, null, attempts);
    (d.attempts || []).forEach((row) => {
      const tr = h("tr", null, null, table);
      h("td", null, `#${row[0]}`, tr);
      h("td", `kf-${row[1]}`, row[1], tr);
      h("td", null, row[2], tr);
      h("td", null, row[3] != null ? `${row[3]} ms` : "", tr);
      h("td", null, row[4] || "", tr);
    });
  }

  model.on("change:graph", drawGraph);
  model.on("change:graph_layout", drawGraph);
  model.on("change:status", paint);
  model.on("change:tasks", paint);
  model.on("change:run_status", drawHeader);
  model.on("change:details", () => { if (!panel.hidden) drawDetails(); });
  drawGraph();
  // A view made after a reload or a kernel restart asks the kernel to re-read the store.
  model.send({ type: "refresh" });
  return () => clearInterval(ticker);
}

export default { render };
