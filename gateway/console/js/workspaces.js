// Workspaces and their stored files: list, browse by prefix, download a file or everything.

import { clear, formatBytes, h, shortId, timeAgo } from "./dom.js";

export function workspacesView(app) {
  const body = h("tbody", {});
  const empty = h("p", { class: "empty", hidden: true }, "No workspaces yet.");
  const view = h(
    "section",
    { class: "view", "aria-labelledby": "workspaces-title" },
    h("div", { class: "view-head" }, h("h1", { id: "workspaces-title" }, "Workspaces")),
    h(
      "div",
      { class: "table-wrap" },
      h(
        "table",
        { class: "workspaces" },
        h("caption", { class: "sr-only" }, "Your workspaces"),
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            ["Workspace", "Kind", "Size", "Entries", "Last saved", "In use by"].map((name) =>
              h("th", { scope: "col" }, name),
            ),
          ),
        ),
        body,
      ),
    ),
    empty,
  );
  app.api
    .workspaces()
    .then(({ workspaces }) => {
      for (const ws of workspaces) {
        body.append(
          h(
            "tr",
            { dataset: { workspaceId: ws.id } },
            h(
              "td",
              { "data-label": "Workspace" },
              h("a", { href: `#/workspaces/${encodeURIComponent(ws.id)}` }, ws.id),
            ),
            h("td", { "data-label": "Kind" }, ws.type),
            h("td", { "data-label": "Size", class: "num" }, formatBytes(ws.size_bytes)),
            h("td", { "data-label": "Entries", class: "num" }, String(ws.file_count)),
            h("td", { "data-label": "Last saved" }, ws.last_saved_at ? timeAgo(ws.last_saved_at) : "never"),
            h(
              "td",
              { "data-label": "In use by" },
              ws.sessions.length
                ? ws.sessions.map((id) => h("a", { href: `#/sessions/${id}`, class: "chip" }, shortId(id)))
                : h("span", { class: "muted" }, "—"),
            ),
          ),
        );
      }
      empty.hidden = workspaces.length > 0;
    })
    .catch((error) => app.fail(error));
  return { element: view };
}

export function workspaceView(app, id) {
  const view = h(
    "section",
    { class: "view", "aria-labelledby": "workspace-title" },
    h(
      "nav",
      { class: "crumbs", "aria-label": "Breadcrumb" },
      h("a", { href: "#/workspaces" }, "Workspaces"),
      " / ",
      h("span", { "aria-current": "page" }, id),
    ),
    h("div", { class: "view-head" }, h("h1", { id: "workspace-title" }, h("code", {}, id))),
    fileBrowser(app, id),
  );
  return { element: view };
}

/** The stored files of workspace `id` (as of its last save), browsed by path prefix. */
export function fileBrowser(app, id) {
  let prefix = "";
  let nextAfter = null;
  const body = h("tbody", {});
  const where = h("nav", { class: "crumbs small", "aria-label": "Folder" });
  const empty = h("p", { class: "empty", hidden: true }, "No files here (yet: files are stored when the session saves).");
  const more = h("button", { type: "button", class: "secondary", hidden: true }, "Load more");
  more.addEventListener("click", () => load(nextAfter));
  const archive = h("button", { type: "button", class: "secondary" }, "Download all (.tar.gz)");
  archive.addEventListener("click", () =>
    download(app, () => app.api.archiveBlob(id), `${id}.tar.gz`),
  );

  function go(newPrefix) {
    prefix = newPrefix;
    load();
  }

  function breadcrumbs() {
    clear(where);
    const parts = prefix ? prefix.split("/") : [];
    where.append(
      parts.length ? h("button", { type: "button", class: "link", on: { click: () => go("") } }, "/") : h("span", {}, "/"),
    );
    parts.forEach((part, i) => {
      const path = parts.slice(0, i + 1).join("/");
      where.append(" ");
      where.append(
        i === parts.length - 1
          ? h("span", { "aria-current": "location" }, `${part}/`)
          : h("button", { type: "button", class: "link", on: { click: () => go(path) } }, `${part}/`),
      );
    });
  }

  async function load(after = null) {
    try {
      const page = await app.api.workspaceFiles(id, { prefix: prefix || undefined, after });
      if (!after) clear(body);
      for (const entry of page.files) body.append(fileRow(entry));
      nextAfter = page.next_after;
      more.hidden = !nextAfter;
      empty.hidden = body.children.length > 0;
      breadcrumbs();
    } catch (error) {
      app.fail(error);
    }
  }

  function fileRow(entry) {
    const name = prefix ? entry.path.slice(prefix.length + 1) : entry.path;
    let cell;
    if (entry.type === "dir") {
      cell = h("button", { type: "button", class: "link", on: { click: () => go(entry.path) } }, `${name}/`);
    } else if (entry.type === "file") {
      cell = h(
        "button",
        {
          type: "button",
          class: "link",
          title: `Download ${entry.path}`,
          on: { click: () => download(app, () => app.api.fileBlob(id, entry.path), entry.path.split("/").pop()) },
        },
        name,
      );
    } else {
      cell = h("span", {}, entry.link_target ? `${name} → ${entry.link_target}` : name);
    }
    return h(
      "tr",
      { dataset: { path: entry.path } },
      h("td", { "data-label": "Name" }, cell),
      h("td", { "data-label": "Size", class: "num" }, entry.type === "file" ? formatBytes(entry.size) : ""),
      h("td", { "data-label": "Mode" }, h("code", {}, entry.mode)),
      h("td", { "data-label": "Modified" }, timeAgo(new Date(entry.mtime * 1000).toISOString())),
    );
  }

  load();
  return h(
    "div",
    { class: "files" },
    h("div", { class: "files-head" }, where, archive),
    h(
      "div",
      { class: "table-wrap" },
      h(
        "table",
        { class: "files-table" },
        h("caption", { class: "sr-only" }, `Files of workspace ${id}`),
        h("thead", {}, h("tr", {}, ["Name", "Size", "Mode", "Modified"].map((n) => h("th", { scope: "col" }, n)))),
        body,
      ),
    ),
    empty,
    more,
  );
}

/** Fetch with the token (a plain link cannot carry it), then hand the bytes to the browser. */
async function download(app, fetchBlob, filename) {
  try {
    const blob = await fetchBlob();
    const url = URL.createObjectURL(blob);
    const link = h("a", { href: url, download: filename, hidden: true });
    document.body.append(link);
    link.click();
    link.remove();
    window.setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (error) {
    app.fail(error);
  }
}
