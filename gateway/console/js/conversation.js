// A session's stream rendered as a conversation: prompts and assistant text as messages,
// each tool call folded with its input and (once it comes) its result, turn results and
// gateway events as compact lines. Every event is applied once, in stream order.

import { formatBytes, formatCost, formatDuration, h, shortId, truncate } from "./dom.js";

const MAX_RESULT_CHARS = 20000;

/** The one-line gist of a tool call's input, for its folded summary. */
function toolBrief(name, input) {
  if (!input || typeof input !== "object") return "";
  const keys = ["command", "file_path", "path", "pattern", "url", "query", "description", "prompt"];
  for (const key of keys) {
    if (typeof input[key] === "string") return input[key];
  }
  const first = Object.values(input).find((value) => typeof value === "string");
  return first || "";
}

function resultText(content) {
  if (typeof content === "string") return content;
  if (Array.isArray(content)) {
    return content
      .map((block) => (block?.type === "text" ? block.text : block?.type ? `[${block.type}]` : ""))
      .join("\n");
  }
  return content === undefined || content === null ? "" : JSON.stringify(content, null, 2);
}

export class Conversation {
  /**
   * `list`: the <ol> to render into. `hooks.onStatus(status)`: the session's status changed;
   * `hooks.onTurnEnd()`: a turn ended (figures such as cost changed); `hooks.onNotice(event)`:
   * a message for this client only (prompt_accepted, interrupt_accepted, error).
   */
  constructor(list, hooks = {}) {
    this.list = list;
    this.hooks = hooks;
    this.lastId = null;
    this.tools = new Map(); // tool_use_id -> its elements
    this.stick = null; // whether to follow the end, decided once per frame
  }

  add(envelope) {
    if (envelope.id) {
      if (this.lastId && compareIds(envelope.id, this.lastId) <= 0) return; // seen already
      this.lastId = envelope.id;
    }
    const event = envelope.event || {};
    if (this.stick === null) {
      // One layout read and one scroll per frame, however many events a replay brings.
      this.stick = this.atBottom();
      window.requestAnimationFrame(() => {
        if (this.stick) this.scrollToEnd();
        this.stick = null;
      });
    }
    if (envelope.id === null && envelope.event?.type !== "gap") {
      this.hooks.onNotice?.(event);
      if (event.type === "error") this.note(`${event.code}: ${event.message}`, "error");
    } else if (envelope.source === "claude") {
      this.claude(event);
    } else {
      this.gateway(event);
    }
  }

  // -- the CLI's own lines ----------------------------------------------------------------
  claude(event) {
    switch (event.type) {
      case "system":
        if (event.subtype === "init") {
          const tools = Array.isArray(event.tools) ? `${event.tools.length} tools` : "";
          this.note(["CLI ready", event.model, tools].filter(Boolean).join(" · "));
        } else if (event.subtype) {
          this.note(`system: ${event.subtype}`);
        }
        break;
      case "assistant":
        for (const block of event.message?.content || []) this.assistantBlock(block);
        break;
      case "user":
        for (const block of event.message?.content || []) {
          if (block?.type === "tool_result") this.toolResult(block);
        }
        break;
      case "result":
        this.result(event);
        break;
      default:
        break; // control_response and the like: protocol, not conversation
    }
  }

  assistantBlock(block) {
    if (block.type === "text" && block.text) {
      this.item("msg assistant", h("div", { class: "who" }, "Claude"), h("div", { class: "text" }, block.text));
    } else if (block.type === "thinking" && block.thinking) {
      this.item(
        "msg thinking",
        h("details", {}, h("summary", {}, "Thinking"), h("div", { class: "text" }, block.thinking)),
      );
    } else if (block.type === "tool_use") {
      this.toolUse(block);
    }
  }

  toolUse(block) {
    const state = h("span", { class: "tool-state running" }, "running");
    const result = h("div", { class: "tool-result", hidden: true });
    const brief = truncate(toolBrief(block.name, block.input), 140);
    const details = h(
      "details",
      {},
      h(
        "summary",
        {},
        h("span", { class: "tool-name" }, block.name || "tool"),
        brief ? h("code", { class: "tool-brief" }, brief) : null,
        state,
      ),
      h("div", { class: "tool-label" }, "Input"),
      h("pre", { class: "tool-input" }, JSON.stringify(block.input ?? {}, null, 2)),
      result,
    );
    this.item("tool", details);
    if (block.id) this.tools.set(block.id, { state, result });
  }

  toolResult(block) {
    const tool = this.tools.get(block.tool_use_id);
    let text = resultText(block.content);
    const cut = text.length > MAX_RESULT_CHARS;
    if (cut) text = text.slice(0, MAX_RESULT_CHARS);
    const body = [
      h("div", { class: "tool-label" }, block.is_error ? "Error" : "Result"),
      h("pre", { class: "tool-output" }, text || "(no output)"),
      cut ? h("p", { class: "muted" }, `… cut at ${MAX_RESULT_CHARS} characters`) : null,
    ];
    if (!tool) {
      this.item("tool orphan", h("details", {}, h("summary", {}, "Tool result"), ...body));
      return;
    }
    tool.result.replaceChildren(...body.filter(Boolean));
    tool.result.hidden = false;
    tool.state.textContent = block.is_error ? "error" : "done";
    tool.state.className = `tool-state ${block.is_error ? "error" : "done"}`;
  }

  result(event) {
    const ok = !event.is_error;
    const parts = [
      ok ? "Turn completed" : `Turn ended: ${event.subtype || "error"}`,
      formatDuration(event.duration_ms),
      event.total_cost_usd !== undefined ? formatCost(event.total_cost_usd) : "",
      event.num_turns ? `${event.num_turns} model call${event.num_turns === 1 ? "" : "s"}` : "",
    ].filter(Boolean);
    const detail = !ok && typeof event.result === "string" && event.result ? event.result : null;
    this.item(
      `turn-end ${ok ? "ok" : "error"}`,
      h("span", {}, parts.join(" · ")),
      detail ? h("div", { class: "text" }, detail) : null,
    );
    this.hooks.onTurnEnd?.();
  }

  // -- CC-Docker's events ------------------------------------------------------------------
  gateway(event) {
    const child = (id) => h("a", { href: `#/sessions/${id}` }, shortId(id));
    switch (event.type) {
      case "turn_started":
        this.item(
          "msg user",
          h("div", { class: "who" }, `You · turn ${event.seq ?? ""}`.trim()),
          h("div", { class: "text" }, event.prompt || ""),
        );
        break;
      case "status":
        this.note(
          [`status: ${event.status}`, event.reason].filter(Boolean).join(" — "),
          event.status === "failed" ? "error" : "status",
          event.logs ? h("details", {}, h("summary", {}, "container log"), h("pre", {}, event.logs)) : null,
        );
        this.hooks.onStatus?.(event.status);
        break;
      case "turn_failed":
        this.item("turn-end error", h("span", {}, `Turn failed: ${event.reason || "no result"}`));
        this.hooks.onTurnEnd?.();
        break;
      case "cli_ready":
        this.note(event.resumed ? "CLI resumed its conversation" : "CLI started");
        break;
      case "cli_exited":
        this.note(`CLI exited (code ${event.exit_code})`, event.expected ? "status" : "error");
        break;
      case "cli_stderr":
        this.note(h("code", {}, event.line || ""), "stderr");
        break;
      case "interrupt_sent":
        this.note("interrupt acknowledged by the CLI");
        break;
      case "child_spawned":
        this.note(["spawned child ", child(event.child_id), `: ${truncate(event.prompt, 100)}`]);
        break;
      case "child_finished":
        this.note(["child ", child(event.child_id), ` finished a turn (${event.status})`]);
        break;
      case "child_failed":
        this.note(["child ", child(event.child_id), ` failed: ${event.reason}`], "error");
        break;
      case "child_stopped":
        this.note(["child ", child(event.child_id), " stopped"]);
        break;
      case "workspace_saved":
        this.note(
          `workspace saved (${event.reason}): ${event.files} files, ${formatBytes(event.bytes)}` +
            `, ${event.uploaded} uploaded`,
        );
        break;
      case "workspace_save_failed":
        this.note(`workspace not saved (${event.reason}): ${event.error}`, "error");
        break;
      case "budget_exceeded":
        this.note("the model budget of this session tree is spent", "error");
        break;
      case "gap":
        this.note(`events were lost before this point (${event.reason || "trimmed"})`, "error");
        break;
      case "error":
        this.note(`${event.code}: ${event.message}`, "error");
        break;
      case "wrapper_fatal":
        this.note(`the CLI kept crashing: ${event.reason}`, "error");
        break;
      case "session_deleted":
        this.note("This session was deleted.", "error");
        break;
      default:
        this.note(event.type || "event");
    }
  }

  // -- rendering ---------------------------------------------------------------------------
  item(kind, ...children) {
    const li = h("li", { class: kind }, ...children);
    this.list.append(li);
    return li;
  }

  note(content, kind = "", extra = null) {
    return this.item(`note ${kind}`.trim(), h("span", {}, content), extra);
  }

  atBottom() {
    const el = this.list;
    return el.scrollHeight - el.scrollTop - el.clientHeight < 80;
  }

  scrollToEnd() {
    this.list.scrollTop = this.list.scrollHeight;
  }
}

/** Stream ids compare as (milliseconds, sequence), not as strings. */
export function compareIds(a, b) {
  const [am, as] = a.split("-").map(Number);
  const [bm, bs] = b.split("-").map(Number);
  return am === bm ? as - bs : am - bm;
}
