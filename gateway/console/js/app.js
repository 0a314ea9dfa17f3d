// The console's shell: sign-in (the token lives in this tab's sessionStorage only), the header,
// notifications, and a hash router over the views.

import { Api, jwtSubject } from "./api.js";
import { h } from "./dom.js";
import { sessionView } from "./session.js";
import { sessionsView } from "./sessions.js";
import { workspaceView, workspacesView } from "./workspaces.js";

const TOKEN_KEY = "ccd.token";

class App {
  constructor() {
    this.main = document.getElementById("main");
    this.nav = document.getElementById("nav");
    this.who = document.getElementById("who");
    this.toasts = document.getElementById("toasts");
    this.current = null;
    this.api = null;
    document.getElementById("sign-out").addEventListener("click", () => this.signOut());
    window.addEventListener("hashchange", () => this.route());
  }

  start() {
    const token = window.sessionStorage.getItem(TOKEN_KEY);
    if (token) this.signedIn(token);
    this.route();
  }

  signedIn(token) {
    this.api = new Api(token);
    window.sessionStorage.setItem(TOKEN_KEY, token);
    document.getElementById("who-name").textContent = jwtSubject(token) || "signed in";
    this.nav.hidden = false;
    this.who.hidden = false;
  }

  signOut(message = "") {
    window.sessionStorage.removeItem(TOKEN_KEY);
    this.api = null;
    this.nav.hidden = true;
    this.who.hidden = true;
    this.show(signInView(this, message));
  }

  route() {
    if (!this.api) {
      this.show(signInView(this));
      return;
    }
    const hash = window.location.hash || "#/sessions";
    if (!hash.startsWith("#/")) return; // an in-page anchor (the skip link)
    const [view, ...rest] = hash.slice(2).split("/");
    const arg = rest.length ? decodeURIComponent(rest.join("/")) : null;
    for (const link of this.nav.querySelectorAll("a")) {
      if (link.dataset.nav === view) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    if (view === "sessions" && arg) this.show(sessionView(this, arg), `Session ${arg.slice(0, 8)}`);
    else if (view === "workspaces" && arg) this.show(workspaceView(this, arg), `Workspace ${arg}`);
    else if (view === "workspaces") this.show(workspacesView(this), "Workspaces");
    else this.show(sessionsView(this), "Sessions");
  }

  show(view, title = "Sign in") {
    this.current?.destroy?.();
    this.current = view;
    this.main.replaceChildren(view.element);
    document.title = `${title} · CC-Docker`;
    this.main.focus({ preventScroll: true });
  }

  /** A failed request: a dead token signs out, anything else is shown and the view stays. */
  fail(error) {
    if (error.status === 401) {
      this.signOut(`Signed out: ${error.message}`);
    } else if (error.status === 404 && error.code === "session_not_found") {
      this.toast("No such session (deleted, or not yours).", "error");
      window.location.hash = "#/sessions";
    } else {
      this.toast(`${error.code}: ${error.message}`, "error");
    }
  }

  toast(message, kind = "info") {
    const item = h("div", { class: `toast ${kind}`, role: kind === "error" ? "alert" : null }, message);
    this.toasts.append(item);
    window.setTimeout(() => item.remove(), kind === "error" ? 8000 : 4000);
  }
}

function signInView(app, message = "") {
  const input = h("input", {
    id: "token",
    name: "token",
    type: "password",
    autocomplete: "off",
    spellcheck: "false",
    required: true,
    "aria-describedby": "token-hint",
  });
  const error = h("p", { class: "error", role: "alert" }, message);
  const submit = h("button", { type: "submit", class: "primary" }, "Sign in");
  const form = h(
    "form",
    { class: "card signin", "aria-labelledby": "signin-title" },
    h("h1", { id: "signin-title" }, "Sign in"),
    h("label", { for: "token" }, "Access token"),
    input,
    h(
      "p",
      { id: "token-hint", class: "hint" },
      "A user token of this gateway: ",
      h("code", {}, "scripts/setup.sh token NAME"),
      " or ",
      h("code", {}, "python -m gateway token --sub NAME"),
      ". It is kept in this browser tab only.",
    ),
    error,
    submit,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    submit.disabled = true;
    const token = input.value.trim();
    const probe = new Api(token);
    try {
      await probe.listSessions({ limit: 1 });
      app.signedIn(token);
      if (window.location.hash.startsWith("#/")) app.route();
      else window.location.hash = "#/sessions"; // routes on hashchange
    } catch (failure) {
      error.textContent =
        failure.status === 401 ? `This token is not accepted: ${failure.message}` : failure.message;
    } finally {
      submit.disabled = false;
    }
  });
  window.setTimeout(() => input.focus(), 0);
  return { element: h("div", { class: "signin-wrap" }, form) };
}

new App().start();
