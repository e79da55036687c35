// kernelflow alert banner. Plain ES module, no dependencies.
/**
 * @typedef Model
 * @property {object} payload  Alert.to_dict(): severity, message, metric, value,
 *   baseline, spread, raised_at (UTC us), history [[us, value], ...], run_id, rule
 * @property {string} figure   "42.1 s — baseline 12.0 s ± 1.3, z = 23.2"
 * @property {string} subject  workflow or workflow.task
 * @property {object} colors   severity -> [fill, border]
 */
const NS = "http://www.w3.org/2000/svg";
const W = 160, H = 36, P = 3; // as SPARK_* in alert.py

function svgEl(tag, attrs) {
  const e = document.createElementNS(NS, tag);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  return e;
}

function div(cls, text) {
  const e = document.createElement("div");
  e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

export function sparkline(a, colors) {
  const pts = a.history || [];
  const now = a.raised_at;
  const ts = pts.map((p) => p[0]).concat([now]);
  const vs = pts.map((p) => p[1]).concat([a.value, a.baseline - a.spread, a.baseline + a.spread]);
  const t0 = Math.min(...ts), t1 = Math.max(...ts);
  let lo = Math.min(...vs), hi = Math.max(...vs);
  if (hi === lo) { lo -= 1; hi += 1; }
  const pad = (hi - lo) * 0.08;
  lo -= pad; hi += pad;
  const x = (t) => P + (W - 2 * P) * (t1 > t0 ? (t - t0) / (t1 - t0) : 1);
  const y = (v) => P + (H - 2 * P) * (hi - v) / (hi - lo);
  const [fill, border] = colors[a.severity] || ["#fff", "#000"];
  const svg = svgEl("svg", { class: "kf-alert-history", width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img" });
  const title = svgEl("title", {});
  title.textContent = `${a.metric}: ${pts.length} earlier points; baseline ${a.baseline} ± ${a.spread}`;
  const top = y(a.baseline + a.spread), bottom = y(a.baseline - a.spread);
  svg.append(
    title,
    svgEl("rect", { class: "kf-alert-band", x: 0, y: top.toFixed(1), width: W, height: Math.max(bottom - top, 1).toFixed(1) }),
    svgEl("line", { class: "kf-alert-mean", x1: 0, x2: W, y1: y(a.baseline).toFixed(1), y2: y(a.baseline).toFixed(1) }),
    svgEl("polyline", { class: "kf-alert-line", points: pts.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ") }),
    svgEl("circle", { class: "kf-alert-current", cx: x(now).toFixed(1), cy: y(a.value).toFixed(1), r: 3, fill: border, stroke: fill }),
  );
  return svg;
}

function draw(model, el) {
  const a = model.get("payload") || {};
  const colors = model.get("colors") || {};
  const [fill, border] = colors[a.severity] || ["#fff", "#000"];
  const root = div("kf-alert");
  root.dataset.severity = a.severity || "";
  root.style.background = fill;
  root.style.borderLeftColor = border;
  const body = div("kf-alert-body");
  const head = div("kf-alert-head");
  const sev = document.createElement("b");
  sev.className = "kf-alert-severity";
  sev.style.color = border;
  sev.textContent = a.severity || "";
  const subj = document.createElement("b");
  subj.textContent = model.get("subject");
  head.append(sev, " ", subj, ` · ${a.metric || ""}`);
  const when = a.raised_at ? new Date(a.raised_at / 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC" : "";
  body.append(
    head,
    div("kf-alert-message", a.message || ""),
    div("kf-alert-figure", model.get("figure")),
    div("kf-alert-meta", `run ${a.run_id || ""} · rule ${a.rule || ""} · ${when}`),
  );
  root.append(body, sparkline(a, colors));
  el.replaceChildren(root);
}

export default {
  render({ model, el }) {
    const redraw = () => draw(model, el);
    redraw();
    for (const name of ["payload", "figure", "subject", "colors"]) model.on(`change:${name}`, redraw);
    return () => {
      for (const name of ["payload", "figure", "subject", "colors"]) model.off(`change:${name}`, redraw);
    };
  },
};
