// kernelflow approval widget. The kernel renders the message and preview
// (escaped HTML), validates the form and answers; this view draws and sends.
const h = (tag, props = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v == null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v === true ? "" : v);
  }
  e.append(...kids.filter((x) => x != null));
  return e;
};

function field(f) {
  let input;
  if (f.widget === "checkbox") {
    input = h("input", { type: "checkbox", name: f.name });
    input.checked = f.default === true;
  } else if (f.widget === "select") {
    input = h("select", { name: f.name });
    if (!f.required && f.default == null) input.append(h("option", { value: "" }));
    for (const c of f.choices) input.append(h("option", { value: c, text: c }));
    input.value = f.text || (f.required ? f.choices[0] || "" : "");
  } else {
    input = h("input", {
      type: "text",
      name: f.name,
      inputmode: f.widget === "number" ? (f.kind === "int" ? "numeric" : "decimal") : null,
      placeholder: f.placeholder || null,
      required: f.required,
    });
    input.value = f.text || "";
  }
  return h(
    "label",
    { class: "kf-approval-field" + (f.widget === "checkbox" ? " kf-check" : ""), title: f.description || null },
    h("span", { class: "kf-approval-label", text: f.name + (f.required ? " *" : "") }),
    input,
    f.description ? h("small", { text: f.description }) : null,
  );
}

export default {
  render({ model, el }) {
    const get = (k) => model.get(k);
    const root = h("div", { class: "kf-approval" });
    const badge = h("span", { class: "kf-approval-badge" });
    const summary = h("small", { class: "kf-approval-summary" });
    const message = h("div", { class: "kf-approval-message" });
    const preview = h("div", { class: "kf-approval-preview" });
    const form = h("div", { class: "kf-approval-fields" });
    const comment = h("textarea", {
      class: "kf-approval-comment",
      rows: 2,
      placeholder: "Comment (with Approve) or reason (with Reject)",
    });
    const approve = h("button", { class: "kf-approve", type: "button", text: "Approve" });
    const reject = h("button", { class: "kf-reject", type: "button", text: "Reject" });
    const note = h("small", { class: "kf-approval-note", text: "sent: the kernel answers as soon as it is idle" });
    const error = h("div", { class: "kf-approval-error", role: "alert" });
    const answer = h("div", { class: "kf-approval-answer" });
    root.append(
      h("div", { class: "kf-approval-head" }, badge, summary),
      message,
      preview,
      form,
      comment,
      h("div", { class: "kf-approval-buttons" }, approve, reject, note),
      error,
      answer,
    );
    el.append(root);
    let sent = false; // set at the first click: a double click submits once

    const sync = () => {
      const status = get("status");
      Object.assign(root.dataset, { status, runId: get("run_id"), task: get("task") });
      badge.textContent = "approval " + status;
      summary.textContent = get("summary");
      error.textContent = get("error");
      error.hidden = !get("error");
      answer.textContent = get("answer_text");
      answer.hidden = !get("answer_text");
      const closed = status !== "pending" || !get("answerable");
      approve.disabled = reject.disabled = closed || sent || get("busy");
      note.hidden = !sent || closed;
      const given = (status === "granted" && get("answer").input) || {};
      for (const i of form.querySelectorAll("[name]")) {
        i.disabled = closed;
        const v = given[i.name];
        if (i.name in given) i.type === "checkbox" ? (i.checked = !!v) : (i.value = typeof v === "string" ? v : JSON.stringify(v));
      }
      comment.disabled = closed;
      comment.hidden = closed && !comment.value;
    };
    const content = () => {
      message.innerHTML = get("message_html"); // escaped by the kernel (markdown, raw HTML escaped)
      preview.innerHTML = get("preview_html");
      preview.hidden = !get("preview_html");
      form.replaceChildren(...get("fields").map(field));
      sync();
    };
    const submit = (decision) => {
      if (sent || approve.disabled) return;
      sent = true;
      sync();
      const values = {};
      for (const i of form.querySelectorAll("[name]")) values[i.name] = i.type === "checkbox" ? i.checked : i.value;
      model.send({ type: "submit", decision, values, comment: comment.value });
    };
    const onMsg = (msg) => {
      if (msg && msg.type === "done") {
        sent = false;
        sync();
      }
    };
    approve.addEventListener("click", () => submit("approve"));
    reject.addEventListener("click", () => submit("reject"));

    const events = [
      ["change:message_html change:preview_html change:fields", content],
      ["change:status change:answerable change:error change:answer change:answer_text change:busy change:summary", sync],
      ["msg:custom", onMsg],
    ];
    for (const [name, fn] of events) model.on(name, fn);
    content();
    return () => {
      for (const [name, fn] of events) model.off(name, fn);
    };
  },
};
