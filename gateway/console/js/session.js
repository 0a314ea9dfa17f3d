// One session: its figures and actions, its live stream as a conversation with a prompt box,
// its spawn tree and its workspace's files.

import { SessionStream } from "./api.js";
import { Conversation } from "./conversation.js";
import {
  clear,
  formatCost,
  formatTokens,
  h,
  shortId,
  statusBadge,
  timeAgo,
  truncate,
} from "./dom.js";
import { fileBrowser } from "./workspaces.js";

const ENDED = ["stopped", "failed"];

export function sessionView(app, id) {
  let session = null;
  let refreshTimer = null;
  let destroyed = false;

  // -- header: figures and actions ---------------------------------------------------------
  const badge = h("span", { class: "status-slot", "aria-live": "polite" });
  const facts = h("dl", { class: "facts" });
  const interrupt = h("button", { type: "button", class: "secondary" }, "Interrupt");
  const resume = h("button", { type: "button", class: "secondary", hidden: true }, "Resume");
  const stop = h("button", { type: "button", class: "danger" }, "Stop");
  interrupt.addEventListener("click", () => act(() => app.api.interrupt(id), "Interrupt sent"));
  resume.addEventListener("click", () => act(() => app.api.resume(id), "Resuming"));
  stop.addEventListener("click", () => {
    if (window.confirm("Stop this session (and its children)? Its files are saved first.")) {
      act(() => app.api.stop(id), "Stopped");
    }
  });

  // -- conversation --------------------------------------------------------------------------
  const streamState = h("p", { class: "stream-state", "aria-live": "polite" }, "connecting…");
  const list = h("ol", { class: "conversation", role: "log", "aria-label": "Conversation" });
  const conversation = new Conversation(list, {
    onStatus: (status) => {
      setStatus(status);
      scheduleRefresh();
    },
    onTurnEnd: () => scheduleRefresh(),
    onNotice: (event) => {
      if (event.type === "prompt_accepted") promptSettled(true);
      if (event.type === "error") promptSettled(false, event);
    },
  });
  const prompt = h("textarea", {
    id: "prompt",
    rows: "2",
    placeholder: "Send a prompt (Ctrl+Enter)",
    "aria-describedby": "prompt-hint",
  });
  const send = h("button", { type: "submit", class: "primary" }, "Send");
  const composer = h(
    "form",
    { class: "composer" },
    h("label", { for: "prompt", class: "sr-only" }, "Prompt"),
    prompt,
    send,
    h("p", { id: "prompt-hint", class: "sr-only" }, "Ctrl+Enter sends."),
  );
  let pending = null; // the prompt text sent over the socket, until accepted or refused
  prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      composer.requestSubmit();
    }
  });
  composer.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = prompt.value;
    if (!text.trim()) return;
    pending = text;
    prompt.value = "";
    if (stream.send({ type: "prompt", prompt: text })) return;
    try {
      await app.api.chat(id, text); // the socket is down: the same over REST
      promptSettled(true);
    } catch (error) {
      promptSettled(false, error);
    }
  });

  function promptSettled(accepted, error) {
    if (pending === null) {
      if (error) app.toast(`${error.code}: ${error.message}`, "error");
      return;
    }
    if (!accepted) {
      if (!prompt.value) prompt.value = pending;
      app.toast(`${error.code}: ${error.message}`, "error");
    }
    pending = null;
  }

  const stream = new SessionStream(app.api, id, {
    onEnvelope: (envelope) => conversation.add(envelope),
    onState: (state, detail) => {
      const text = {
        connecting: "connecting…",
        live: "live",
        closed: "closed",
        reconnecting: `connection lost; reconnecting in ${Math.round((detail?.delay || 0) / 1000)} s`,
      }[state];
      streamState.textContent = text;
      streamState.dataset.state = state;
      if (state === "reconnecting" && detail.failures === 3) refresh(); // signed out? deleted?
    },
  });

  // -- tabs ----------------------------------------------------------------------------------
  const treePanel = h("div", { class: "tree" });
  const filesPanel = h("div", {});
  const panels = {
    conversation: h("div", { class: "panel conversation-panel" }, streamState, list, composer),
    tree: h("div", { class: "panel", hidden: true }, treePanel),
    files: h("div", { class: "panel", hidden: true }, filesPanel),
  };
  const tabs = tabList(panels, (name) => {
    if (name === "conversation") conversation.scrollToEnd();
    if (name === "tree") loadTree();
    if (name === "files") loadFiles();
  });

  const view = h(
    "section",
    { class: "view session-view", "aria-labelledby": "session-title" },
    h(
      "nav",
      { class: "crumbs", "aria-label": "Breadcrumb" },
      h("a", { href: "#/sessions" }, "Sessions"),
      " / ",
      h("span", { "aria-current": "page" }, shortId(id)),
    ),
    h(
      "header",
      { class: "session-head" },
      h("div", { class: "title-row" }, h("h1", { id: "session-title" }, "Session ", h("code", { title: id }, shortId(id))), badge),
      facts,
      h("div", { class: "actions" }, interrupt, resume, stop),
    ),
    tabs,
    ...Object.values(panels),
  );

  function setStatus(status) {
    if (session) session.status = status;
    badge.replaceChildren(statusBadge(status));
    const ended = ENDED.includes(status);
    interrupt.hidden = ended;
    interrupt.disabled = status !== "busy"; // only a running turn can be interrupted
    stop.hidden = ended;
    resume.hidden = !ended;
    prompt.disabled = ended || status === "stopping";
    send.disabled = prompt.disabled;
    prompt.placeholder = ended ? `This session is ${status}. Resume it to continue.` : "Send a prompt (Ctrl+Enter)";
  }

  function renderFacts() {
    const s = session;
    const fact = (name, ...value) => [h("div", {}, h("dt", {}, name), h("dd", {}, ...value))];
    clear(facts).append(
      ...fact("Model", s.config?.model || "default"),
      ...fact("Cost", h("span", { dataset: { fact: "cost" } }, formatCost(s.usage?.cost_usd))),
      ...fact("Tokens", formatTokens(s.usage), ` in ${s.usage?.requests || 0} calls`),
      ...fact(
        "Workspace",
        s.workspace ? h("a", { href: `#/workspaces/${encodeURIComponent(s.workspace.id)}` }, s.workspace.id) : "none",
      ),
      ...(s.parent_id ? fact("Parent", h("a", { href: `#/sessions/${s.parent_id}` }, shortId(s.parent_id))) : []),
      ...fact("Created", timeAgo(s.created_at)),
      ...(s.failure_reason ? fact("Failure", truncate(s.failure_reason, 300)) : []),
    );
  }

  /** Read the session again; false when it could not be read (the app said why). */
  async function refresh() {
    try {
      const fresh = await app.api.getSession(id);
      if (destroyed) return false;
      session = fresh;
      renderFacts();
      setStatus(session.status);
      return true;
    } catch (error) {
      if (!destroyed) app.fail(error);
      return false;
    }
  }

  function scheduleRefresh() {
    // Several events arrive together at a turn's end: one read for all of them.
    window.clearTimeout(refreshTimer);
    refreshTimer = window.setTimeout(refresh, 300);
  }

  async function act(call, done) {
    try {
      await call();
      app.toast(done);
      scheduleRefresh();
      if (done === "Resuming" && !stream.ws) stream.start(conversation.lastId);
    } catch (error) {
      app.toast(`${error.code}: ${error.message}`, "error");
    }
  }

  async function loadTree() {
    try {
      const rootId = session?.root_id || id;
      const root = await app.api.tree(rootId);
      clear(treePanel).append(
        h("div", { class: "panel-head" }, h("h2", {}, "Spawn tree"), h("button", { type: "button", class: "secondary", on: { click: loadTree } }, "Refresh")),
        h("ul", { class: "tree-root" }, treeNode(root, id)),
      );
    } catch (error) {
      app.fail(error);
    }
  }

  function loadFiles() {
    if (!session?.workspace) {
      clear(filesPanel).append(h("p", { class: "empty" }, "This session has no workspace."));
      return;
    }
    const save = h("button", { type: "button", class: "secondary" }, "Save now");
    save.hidden = ENDED.includes(session.status) || session.workspace.read_only;
    save.addEventListener("click", async () => {
      save.disabled = true;
      await act(() => app.api.snapshot(id), "Workspace saved");
      save.disabled = false;
      loadFiles();
    });
    clear(filesPanel).append(
      h(
        "div",
        { class: "panel-head" },
        h("h2", {}, "Files of ", h("code", {}, session.workspace.id)),
        save,
      ),
      h("p", { class: "muted small" }, "As of the workspace's last save (on stop, every few minutes, or Save now)."),
      fileBrowser(app, session.workspace.id),
    );
  }

  refresh().then((found) => {
    if (found && !destroyed) stream.start();
  });
  return {
    element: view,
    destroy: () => {
      destroyed = true;
      stream.stop();
      window.clearTimeout(refreshTimer);
    },
  };
}

function treeNode(node, currentId) {
  const here = node.id === currentId;
  const last = node.last_turn?.result_text;
  return h(
    "li",
    { dataset: { sessionId: node.id } },
    h(
      "div",
      { class: `tree-node${here ? " current" : ""}` },
      here
        ? h("strong", { "aria-current": "true" }, h("code", {}, shortId(node.id)))
        : h("a", { href: `#/sessions/${node.id}` }, h("code", {}, shortId(node.id))),
      " ",
      statusBadge(node.status),
      h("span", { class: "muted small" }, ` ${formatCost(node.usage?.cost_usd)}`),
      last ? h("span", { class: "tree-last" }, truncate(last, 120)) : null,
    ),
    node.children?.length ? h("ul", {}, node.children.map((child) => treeNode(child, currentId))) : null,
  );
}

/** WAI-ARIA tabs: arrow keys move between them, each controls one panel. */
function tabList(panels, onShow) {
  const names = { conversation: "Conversation", tree: "Spawn tree", files: "Files" };
  const buttons = Object.keys(panels).map((key, i) => {
    const tab = h(
      "button",
      {
        type: "button",
        role: "tab",
        id: `tab-${key}`,
        "aria-controls": `panel-${key}`,
        "aria-selected": i === 0 ? "true" : "false",
        tabindex: i === 0 ? "0" : "-1",
      },
      names[key],
    );
    panels[key].id = `panel-${key}`;
    panels[key].setAttribute("role", "tabpanel");
    panels[key].setAttribute("aria-labelledby", `tab-${key}`);
    tab.addEventListener("click", () => show(key));
    return tab;
  });
  function show(key) {
    for (const button of buttons) {
      const selected = button.id === `tab-${key}`;
      button.setAttribute("aria-selected", String(selected));
      button.tabIndex = selected ? 0 : -1;
      if (selected) button.focus();
    }
    for (const [name, panel] of Object.entries(panels)) panel.hidden = name !== key;
    onShow(key);
  }
  const list = h("div", { role: "tablist", class: "tabs", "aria-label": "Session views" }, buttons);
  list.addEventListener("keydown", (event) => {
    const index = buttons.indexOf(document.activeElement);
    if (index < 0) return;
    const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
    if (step) {
      event.preventDefault();
      show(Object.keys(panels)[(index + step + buttons.length) % buttons.length]);
    }
  });
  return list;
}
