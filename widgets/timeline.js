// kernelflow run timeline: task bars over time and a slider through the run's events.
// Plain ES module, no dependencies. All state at a seq comes from `changes`,
// computed in the kernel by the reducer's fold, so scrubbing needs no kernel.
/** @typedef Model synced traits (see timeline.py for each one's shape):
 * tasks, t0 (UTC us), events [ts, type, task, attempt] by seq (ts: us since t0),
 * changes [seq, ts, task, status], run_changes [seq, ts, status], bars, spans, marks, xs (x in [0, 1] by seq), breaks,
 * colors {status: [fill, border]}, seq (the slider), scrub_status {task: status} and
 * scrub_run_status at seq (set here; a DAG's status is linked to them). */
const NS = "http://www.w3.org/2000/svg";
const LABEL_W = 130, ROW_H = 18, TOP = 16; // as in timeline.py
const DATA = ["t0", "tasks", "events", "changes", "run_changes", "bars", "spans", "marks", "xs", "breaks", "colors"];

function s(tag, attrs, title) {
  const e = document.createElementNS(NS, tag);
  for (const k in attrs) if (attrs[k] !== undefined) e.setAttribute(k, attrs[k]);
  if (title) {
    const t = document.createElementNS(NS, "title");
    t.textContent = title;
    e.append(t);
  }
  return e;
}

const ms = (v) => (v == null ? "not ended" : v < 1000 ? `${v.toFixed(1)} ms` : `${(v / 1000).toFixed(2)} s`);
const secs = (v) => (v < 60 ? `${v.toFixed(2)} s` : v < 3600 ? `${(v / 60).toFixed(1)} min` : `${(v / 3600).toFixed(1)} h`);

/** {task: status} after the changes up to seq (as statuses_at in timeline.py). */
export function statusesAt(changes, seq) {
  const out = {};
  for (const c of changes) {
    if (c[0] > seq) break;
    out[c[2]] = c[3];
  }
  return out;
}

function runStatusAt(runChanges, seq) {
  let st = "pending";
  for (const c of runChanges) {
    if (c[0] > seq) break;
    st = c[2];
  }
  return st;
}

export default {
  render({ model, el }) {
    const root = document.createElement("div");
    root.className = "kf-timeline";
    const head = document.createElement("div");
    head.className = "kf-tl-head";
    const box = document.createElement("div");
    box.className = "kf-tl-scroll";
    const ctl = document.createElement("div");
    ctl.className = "kf-tl-controls";
    const range = document.createElement("input");
    range.type = "range";
    range.className = "kf-scrub";
    range.min = 0;
    range.step = 1;
    const label = document.createElement("div");
    label.className = "kf-scrub-label";
    ctl.append(range, label);
    root.append(head, box, ctl);
    el.replaceChildren(root);

    let squares = {}, cursor, future, plotW = 560;
    const color = (st) => (model.get("colors") || {})[st] || ["#fff", "#888"];

    function build() {
      const tasks = model.get("tasks"), xs = model.get("xs"), events = model.get("events");
      plotW = Math.max(240, (root.clientWidth || 700) - LABEL_W - 12);
      const rows = {};
      tasks.forEach((t, i) => (rows[t] = i));
      const x = (seq) => LABEL_W + plotW * (seq == null ? 1 : xs[seq]);
      const y = (t) => TOP + rows[t] * ROW_H;
      const h = TOP + tasks.length * ROW_H + 6;
      const svg = s("svg", { class: "kf-gantt", width: LABEL_W + plotW + 10, height: h });
      for (const [x0, x1, sec] of model.get("breaks")) {
        const a = LABEL_W + plotW * x0, b = LABEL_W + plotW * x1;
        const g = s("g", { class: "kf-break" });
        g.append(
          s("rect", { x: a, y: TOP, width: Math.max(b - a, 1), height: h - TOP - 6 }, `idle ${secs(sec)}`),
          s("text", { x: (a + b) / 2, y: TOP - 4, "text-anchor": "middle" }),
        );
        g.lastChild.textContent = `⋯${secs(sec)}`;
        svg.append(g);
      }
      squares = {};
      tasks.forEach((t, i) => {
        const g = s("g", { class: "kf-row", "data-task": t });
        const sq = s("rect", { x: 2, y: TOP + i * ROW_H + 4, width: 9, height: 9, rx: 2 });
        const tx = s("text", { x: 15, y: TOP + i * ROW_H + 12 }, t);
        tx.append(t.length > 20 ? t.slice(0, 19) + "…" : t);
        g.append(sq, tx);
        squares[t] = [g, sq];
        svg.append(g);
      });
      for (const [t, kind, a, b] of model.get("spans")) {
        const [fill, border] = color(kind);
        svg.append(s("rect", {
          class: "kf-wait", "data-task": t, "data-kind": kind, x: x(a), y: y(t) + 5,
          width: Math.max(x(b) - x(a), 2), height: ROW_H - 10, fill, stroke: border,
        }, `${t}: ${kind}`));
      }
      for (const [t, n, a, b, st, dur, err] of model.get("bars")) {
        const [fill, border] = color(st);
        const r = s("rect", {
          class: "kf-bar", "data-task": t, "data-attempt": n, "data-status": st, x: x(a), y: y(t) + 3,
          width: Math.max(x(b) - x(a), 2), height: ROW_H - 6, rx: 2, fill, stroke: border,
        }, `${t} attempt ${n}: ${st}, ${ms(dur)}${err ? ` (${err})` : ""}`);
        r.addEventListener("click", () => scrub(b == null ? events.length - 1 : b, true));
        svg.append(r);
      }
      for (const [t, seq, st] of model.get("marks")) {
        svg.append(s("rect", {
          class: "kf-mark", "data-task": t, "data-status": st, x: x(seq) - 1, y: y(t) + 2,
          width: 3, height: ROW_H - 4, fill: color(st)[1],
        }, `${t}: ${st}`));
      }
      future = s("rect", { class: "kf-future", y: 0, height: h });
      cursor = s("line", { class: "kf-cursor", y1: 2, y2: h });
      svg.append(future, cursor);
      box.replaceChildren(svg);
      head.textContent = `${model.get("workflow")} · run ${model.get("run_id")} · ${secs(Math.max(events[events.length - 1][0], 0) / 1e6)} · ${events.length} events`;
      range.max = events.length - 1;
      scrub(model.get("seq"), false);
    }

    function scrub(seq, push) {
      const events = model.get("events"), xs = model.get("xs");
      seq = Math.max(0, Math.min(seq | 0, events.length - 1));
      range.value = seq;
      const st = statusesAt(model.get("changes"), seq);
      for (const t in squares) {
        const [g, sq] = squares[t];
        const now = st[t] || "pending";
        const [fill, border] = color(now);
        g.dataset.status = now;
        sq.setAttribute("fill", fill);
        sq.setAttribute("stroke", border);
      }
      const cx = LABEL_W + plotW * xs[seq];
      cursor.setAttribute("x1", cx);
      cursor.setAttribute("x2", cx);
      future.setAttribute("x", cx);
      future.setAttribute("width", Math.max(LABEL_W + plotW + 10 - cx, 0));
      const [ts, type, task, attempt] = events[seq];
      const when = new Date((model.get("t0") + ts) / 1000).toISOString().slice(11, 23);
      const run = runStatusAt(model.get("run_changes"), seq);
      label.textContent = `seq ${seq} · ${when} UTC (+${ms(ts / 1000)}) · ${type}` +
        (task ? ` · ${task}${attempt ? ` #${attempt}` : ""}` : "") + ` · run ${run}`;
      label.dataset.seq = seq;
      if (push && seq !== model.get("seq")) {
        model.set({ seq, scrub_status: st, scrub_run_status: run });
        model.save_changes();
      }
    }

    range.addEventListener("input", () => scrub(+range.value, true));
    const onSeq = () => scrub(model.get("seq"), false);
    let queued = false;
    const rebuild = () => {
      if (queued) return;
      queued = true;
      Promise.resolve().then(() => { queued = false; build(); });
    };
    model.on("change:seq", onSeq);
    for (const name of DATA) model.on(`change:${name}`, rebuild);
    let width = 0;
    const ro = typeof ResizeObserver === "undefined" ? null : new ResizeObserver(() => {
      if (root.clientWidth && Math.abs(root.clientWidth - width) > 4) { width = root.clientWidth; rebuild(); }
    });
    ro?.observe(root);
    build();
    return () => {
      ro?.disconnect();
      model.off("change:seq", onSeq);
      for (const name of DATA) model.off(`change:${name}`, rebuild);
    };
  },
};
