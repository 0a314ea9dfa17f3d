// The gateway's public API, as the console uses it: REST under /api/v1 with the bearer token,
// and a session's WebSocket stream (?token=, since a browser cannot set its headers) that
// resumes from the last event it delivered (?after=) whenever the connection drops.

const BASE = "/api/v1";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function segments(path) {
  return String(path).split("/").map(encodeURIComponent).join("/");
}

export class Api {
  constructor(token) {
    this.token = token;
  }

  async request(method, path, { body, query, raw = false } = {}) {
    const url = new URL(BASE + path, window.location.origin);
    for (const [name, value] of Object.entries(query || {})) {
      if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
    }
    const headers = { Authorization: `Bearer ${this.token}` };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(url, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch {
      throw new ApiError(0, "unreachable", "The gateway cannot be reached.");
    }
    if (!response.ok) {
      let code = `http_${response.status}`;
      let message = response.statusText || "request failed";
      try {
        const error = (await response.json()).error;
        if (error) ({ code, message } = error);
      } catch {
        // not a JSON error body: keep the HTTP status
      }
      throw new ApiError(response.status, code, message);
    }
    if (raw) return response;
    return response.status === 204 ? null : response.json();
  }

  // -- sessions -----------------------------------------------------------------------------
  listSessions({ cursor, status, limit = 50 } = {}) {
    return this.request("GET", "/sessions", { query: { cursor, status, limit } });
  }
  getSession(id) {
    return this.request("GET", `/sessions/${id}`);
  }
  createSession(body) {
    return this.request("POST", "/sessions", { body });
  }
  /** Queue a prompt without waiting for its turn (the stream shows it). */
  chat(id, prompt) {
    return this.request("POST", `/sessions/${id}/chat`, { body: { prompt, wait: false } });
  }
  interrupt(id) {
    return this.request("POST", `/sessions/${id}/interrupt`);
  }
  stop(id) {
    return this.request("POST", `/sessions/${id}/stop`);
  }
  resume(id) {
    return this.request("POST", `/sessions/${id}/resume`);
  }
  tree(id) {
    return this.request("GET", `/sessions/${id}/tree`);
  }
  snapshot(id) {
    return this.request("POST", `/sessions/${id}/workspace/snapshot`);
  }

  // -- workspaces ---------------------------------------------------------------------------
  workspaces() {
    return this.request("GET", "/workspaces");
  }
  workspace(id) {
    return this.request("GET", `/workspaces/${encodeURIComponent(id)}`);
  }
  workspaceFiles(id, { prefix, after, limit = 200 } = {}) {
    return this.request("GET", `/workspaces/${encodeURIComponent(id)}/files`, {
      query: { prefix, after, limit },
    });
  }
  async fileBlob(id, path) {
    const response = await this.request(
      "GET",
      `/workspaces/${encodeURIComponent(id)}/files/${segments(path)}`,
      { raw: true },
    );
    return response.blob();
  }
  async archiveBlob(id) {
    const response = await this.request("GET", `/workspaces/${encodeURIComponent(id)}/archive`, {
      raw: true,
    });
    return response.blob();
  }

  streamUrl(id, after) {
    const url = new URL(`${BASE}/sessions/${id}/stream`, window.location.origin);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    url.searchParams.set("token", this.token);
    if (after) url.searchParams.set("after", after);
    return url.toString();
  }
}

/**
 * A session's live stream that survives dropped connections: it reconnects with backoff and
 * asks for the events after the last one it delivered, so nothing is lost or repeated.
 * `onEnvelope(envelope)` gets every message; `onState(state, detail)` gets "connecting",
 * "live", "reconnecting" (detail: milliseconds until the next attempt, and failures so far)
 * and "closed".
 */
export class SessionStream {
  constructor(api, sessionId, { onEnvelope, onState }) {
    this.api = api;
    this.sessionId = sessionId;
    this.onEnvelope = onEnvelope;
    this.onState = onState;
    this.after = null;
    this.ws = null;
    this.timer = null;
    this.failures = 0;
    this.stopped = false;
    this.ended = false;
  }

  start(after = null) {
    this.after = after;
    this.stopped = false;
    this.connect();
  }

  connect() {
    this.onState("connecting");
    const ws = new WebSocket(this.api.streamUrl(this.sessionId, this.after));
    this.ws = ws;
    ws.addEventListener("open", () => {
      this.failures = 0;
      this.onState("live");
    });
    ws.addEventListener("message", (message) => {
      let envelope;
      try {
        envelope = JSON.parse(message.data);
      } catch {
        return;
      }
      if (envelope.id) this.after = envelope.id;
      if (envelope.event?.type === "session_deleted") this.ended = true;
      this.onEnvelope(envelope);
    });
    ws.addEventListener("close", () => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (this.stopped || this.ended) {
        this.onState("closed");
        return;
      }
      this.failures += 1;
      const delay = Math.min(10000, 500 * 2 ** Math.min(this.failures - 1, 5));
      this.onState("reconnecting", { delay, failures: this.failures });
      this.timer = window.setTimeout(() => this.connect(), delay);
    });
  }

  /** Send a command; false when the socket is not open (the caller falls back to REST). */
  send(command) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify(command));
      return true;
    }
    return false;
  }

  stop() {
    this.stopped = true;
    window.clearTimeout(this.timer);
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close(1000, "leaving");
  }
}

export function jwtSubject(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(payload)).sub || null;
  } catch {
    return null;
  }
}
