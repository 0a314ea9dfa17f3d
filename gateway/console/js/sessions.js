// The session list: status, model, cost, tokens; filter by status, page on, start a session.

import {
  clear,
  formatCost,
  formatTokens,
  h,
  shortId,
  statusBadge,
  timeAgo,
} from "./dom.js";

const STATUSES = ["starting", "ready", "busy", "stopping", "stopped", "failed"];
const REFRESH_MS = 5000;

export function sessionsView(app) {
  let status = "";
  let timer = null;
  const body = h("tbody", {});
  const empty = h("p", { class: "empty", hidden: true }, "No sessions yet. Start one above.");
  const more = h("button", { type: "button", class: "secondary", hidden: true }, "Load more");
  let nextCursor = null;

  const filter = h(
    "select",
    { id: "status-filter" },
    h("option", { value: "" }, "All"),
    STATUSES.map((s) => h("option", { value: s }, s)),
  );
  filter.addEventListener("change", () => {
    status = filter.value;
    load();
  });

  const form = newSessionForm(app);
  const toggle = h(
    "button",
    { type: "button", class: "primary", "aria-expanded": "false", "aria-controls": "new-session" },
    "New session",
  );
  toggle.addEventListener("click", () => {
    form.hidden = !form.hidden;
    toggle.setAttribute("aria-expanded", String(!form.hidden));
    if (!form.hidden) form.querySelector("textarea").focus();
  });
  const refresh = h("button", { type: "button", class: "secondary" }, "Refresh");
  refresh.addEventListener("click", () => load());
  more.addEventListener("click", () => load(nextCursor));

  const table = h(
    "table",
    { class: "sessions" },
    h("caption", { class: "sr-only" }, "Your sessions, newest first"),
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        ["Session", "Status", "Model", "Cost", "Tokens", "Created"].map((name) =>
          h("th", { scope: "col" }, name),
        ),
      ),
    ),
    body,
  );

  const view = h(
    "section",
    { class: "view", "aria-labelledby": "sessions-title" },
    h(
      "div",
      { class: "view-head" },
      h("h1", { id: "sessions-title" }, "Sessions"),
      h(
        "div",
        { class: "actions" },
        h("label", { for: "status-filter", class: "inline" }, "Status"),
        filter,
        refresh,
        toggle,
      ),
    ),
    form,
    h("div", { class: "table-wrap" }, table),
    empty,
    more,
  );

  async function load(cursor = null) {
    try {
      const page = await app.api.listSessions({ cursor, status });
      if (!cursor) clear(body);
      for (const session of page.sessions) body.append(row(session));
      nextCursor = page.next_cursor;
      more.hidden = !nextCursor;
      empty.hidden = body.children.length > 0;
    } catch (error) {
      app.fail(error);
    }
  }

  function tick() {
    // Refresh the first page while it is visible, unless the user paged on.
    if (document.visibilityState === "visible" && !nextCursor) load();
  }

  load();
  timer = window.setInterval(tick, REFRESH_MS);
  return { element: view, destroy: () => window.clearInterval(timer) };
}

function row(session) {
  const link = h(
    "a",
    { href: `#/sessions/${session.id}`, title: session.id, class: "session-link" },
    h("code", {}, shortId(session.id)),
  );
  const lineage = session.parent_id
    ? h("span", { class: "muted small" }, ` child of ${shortId(session.parent_id)}`)
    : null;
  return h(
    "tr",
    { dataset: { sessionId: session.id } },
    h("td", { "data-label": "Session" }, link, lineage),
    h("td", { "data-label": "Status" }, statusBadge(session.status)),
    h("td", { "data-label": "Model" }, session.config?.model || h("span", { class: "muted" }, "default")),
    h("td", { "data-label": "Cost", class: "num" }, formatCost(session.usage?.cost_usd)),
    h("td", { "data-label": "Tokens", class: "num" }, formatTokens(session.usage)),
    h("td", { "data-label": "Created" }, timeAgo(session.created_at)),
  );
}

function newSessionForm(app) {
  const prompt = h("textarea", { id: "new-prompt", rows: "3", placeholder: "Optional: its first prompt" });
  const model = h("input", { id: "new-model", type: "text", placeholder: "default", autocomplete: "off" });
  const workspace = h("input", {
    id: "new-workspace",
    type: "text",
    placeholder: "ephemeral (its own)",
    autocomplete: "off",
    pattern: "[A-Za-z0-9][A-Za-z0-9._-]{0,99}",
  });
  const error = h("p", { class: "error", role: "alert" });
  const submit = h("button", { type: "submit", class: "primary" }, "Start session");
  const form = h(
    "form",
    { id: "new-session", class: "card new-session", hidden: true },
    h("h2", {}, "New session"),
    h("label", { for: "new-prompt" }, "Prompt"),
    prompt,
    h(
      "div",
      { class: "row" },
      h("div", {}, h("label", { for: "new-model" }, "Model"), model),
      h("div", {}, h("label", { for: "new-workspace" }, "Persistent workspace"), workspace),
    ),
    error,
    submit,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    const body = {};
    if (prompt.value.trim()) body.prompt = prompt.value;
    if (model.value.trim()) body.config = { model: model.value.trim() };
    if (workspace.value.trim()) body.workspace = { type: "persistent", id: workspace.value.trim() };
    submit.disabled = true;
    try {
      const session = await app.api.createSession(body);
      window.location.hash = `#/sessions/${session.id}`;
    } catch (failure) {
      error.textContent = `${failure.code}: ${failure.message}`;
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}
