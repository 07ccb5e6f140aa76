/* Shared helpers of the two pages: the token (kept in this tab's sessionStorage, never in a URL), an api() fetch
   helper with the bearer header, a server-sent-events reader over fetch() (EventSource cannot send headers),
   small DOM helpers and a readable rendering of actions. Plain ES2020, no dependencies. */
"use strict";

const AP = (() => {
  const TOKEN_KEY = "bpm-autopilot.token";

  class ApiError extends Error {
    constructor(status, detail) {
      super(`${status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
      this.status = status;
      this.detail = detail;
    }
  }

  function token() {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  function setToken(value) {
    sessionStorage.setItem(TOKEN_KEY, value);
  }

  function clearToken() {
    sessionStorage.removeItem(TOKEN_KEY);
  }

  function headers(extra) {
    const out = Object.assign({}, extra || {});
    const t = token();
    if (t) out.Authorization = `Bearer ${t}`;
    return out;
  }

  /* fetch(path) with the token; JSON in and out. Throws ApiError (status, detail) on a non-2xx answer. */
  async function api(path, options) {
    const opts = options || {};
    const init = { method: opts.method || "GET", headers: headers(opts.headers), signal: opts.signal };
    if (opts.body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(opts.body);
    }
    const response = await fetch(path, init);
    if (!response.ok) {
      let detail = response.statusText;
      try {
        const body = await response.json();
        detail = body.detail !== undefined ? body.detail : body;
      } catch (_) {
        /* not JSON */
      }
      if (response.status === 401) onUnauthorized();
      throw new ApiError(response.status, detail);
    }
    if (opts.raw) return response;
    if (response.status === 204) return null;
    const type = response.headers.get("Content-Type") || "";
    return type.includes("json") ? response.json() : response.text();
  }

  /* An object URL of an image behind the token (an <img src> cannot send the header). */
  async function blobUrl(path) {
    const response = await api(path, { raw: true });
    return URL.createObjectURL(await response.blob());
  }

  /* Read a text/event-stream with fetch(): calls onEvent(type, data) per event, onStatus("open"|"closed"|
     "error", detail) on changes, and reconnects with back-off until stop() is called. Returns {stop}. */
  function stream(path, onEvent, onStatus) {
    let controller = null;
    let stopped = false;
    let delay = 500;
    const status = onStatus || (() => {});

    function dispatch(block) {
      let type = "message";
      const data = [];
      for (const line of block.split(/\r?\n/)) {
        if (!line || line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "event") type = value;
        else if (field === "data") data.push(value);
      }
      if (data.length) onEvent(type, data.join("\n"));
    }

    async function connect() {
      while (!stopped) {
        controller = new AbortController();
        try {
          const response = await fetch(path, {
            headers: headers({ Accept: "text/event-stream" }),
            signal: controller.signal,
            cache: "no-store",
          });
          if (response.status === 401 || response.status === 403) {
            status("error", `HTTP ${response.status}`);
            if (response.status === 401) onUnauthorized();
            return;
          }
          if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
          status("open");
          delay = 500;
          const reader = response.body.getReader();
          const decoder = new TextDecoder();
          let buffer = "";
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            buffer += decoder.decode(value, { stream: true });
            let match;
            while ((match = /\r?\n\r?\n/.exec(buffer)) !== null) {
              const block = buffer.slice(0, match.index);
              buffer = buffer.slice(match.index + match[0].length);
              dispatch(block);
            }
          }
          status("closed");
        } catch (err) {
          if (stopped) return;
          status("error", String(err && err.message ? err.message : err));
        }
        if (stopped) return;
        await new Promise((resolve) => setTimeout(resolve, delay));
        delay = Math.min(delay * 2, 10000);
      }
    }

    connect();
    return {
      stop() {
        stopped = true;
        if (controller) controller.abort();
      },
    };
  }

  let unauthorizedHandler = null;

  function onUnauthorized() {
    if (unauthorizedHandler) unauthorizedHandler();
  }

  /* Wire the login form: on submit, store the token and call probe(); a failing probe clears it again.
     onLogin(result of probe) runs after a good login (also on load when a stored token still works). */
  function setupLogin({ probe, onLogin, onLogout }) {
    const loginView = document.getElementById("login");
    const appView = document.getElementById("app");
    const form = document.getElementById("login-form");
    const input = document.getElementById("token-input");
    const error = document.getElementById("login-error");
    const logout = document.getElementById("logout-button");

    function show(loggedIn) {
      loginView.hidden = loggedIn;
      appView.hidden = !loggedIn;
      if (logout) logout.hidden = !loggedIn;
    }

    async function attempt() {
      try {
        const result = await probe();
        show(true);
        error.textContent = "";
        onLogin(result);
      } catch (err) {
        clearToken();
        show(false);
        error.textContent =
          err instanceof ApiError && (err.status === 401 || err.status === 403)
            ? `This token is not valid here (${err.status}).`
            : `Login failed: ${err.message || err}`;
      }
    }

    unauthorizedHandler = () => {
      clearToken();
      if (onLogout) onLogout();
      show(false);
      error.textContent = "The session expired or the token was revoked: log in again.";
    };

    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const value = input.value.trim();
      if (!value) {
        error.textContent = "Paste your token.";
        return;
      }
      setToken(value);
      input.value = "";
      attempt();
    });
    if (logout) {
      logout.addEventListener("click", () => {
        clearToken();
        if (onLogout) onLogout();
        show(false);
        error.textContent = "";
      });
    }
    if (token()) attempt();
    else show(false);
  }

  /* el("div", {class: "x", "data-testid": "y", onclick: fn}, child, "text", ...) */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
      else if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
    return node;
  }

  function fmtAge(seconds) {
    if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "-";
    const s = Math.max(0, Math.floor(seconds));
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
    return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  }

  function fmtPct(value, digits) {
    if (value === null || value === undefined) return "-";
    return `${(100 * value).toFixed(digits === undefined ? 1 : digits)}%`;
  }

  function fmtNum(value, digits) {
    if (value === null || value === undefined) return "-";
    return Number(value).toFixed(digits === undefined ? 2 : digits);
  }

  function fmtTime(iso) {
    if (!iso) return "-";
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleTimeString();
  }

  /* A one-line readable rendering of an action (schemas/actions.py), with the control's label when known. */
  function describeAction(action, screen) {
    if (!action) return "(none)";
    const label = (id) => {
      const control = screen && (screen.controls || []).find((c) => c.id === id);
      return control && control.label ? `"${control.label}" (${id})` : id;
    };
    switch (action.type) {
      case "fill_field":
        return `Fill ${label(action.control_id)} with "${action.value}"`;
      case "select_option":
        return `Select "${action.option}" in ${label(action.control_id)}`;
      case "toggle_checkbox":
        return `${action.checked ? "Tick" : "Untick"} ${label(action.control_id)}`;
      case "click_control":
        return `Click ${label(action.control_id)}`;
      case "send_text_to_chat":
        return `Send to the customer: "${action.text}"`;
      case "transfer_chat":
        return `Transfer the chat to queue "${action.queue}"`;
      case "close_chat":
        return `Close the chat with resolution "${action.resolution}"`;
      default:
        return JSON.stringify(action);
    }
  }

  const REASONS = [
    ["model_error", "Model error: the proposal is wrong"],
    ["acceptable_alternative", "Acceptable alternative: mine is just preferred"],
    ["environment", "Environment: the screen or data changed"],
    ["other", "Other"],
  ];

  return {
    ApiError,
    api,
    blobUrl,
    stream,
    token,
    setToken,
    clearToken,
    setupLogin,
    el,
    clear,
    fmtAge,
    fmtPct,
    fmtNum,
    fmtTime,
    describeAction,
    REASONS,
  };
})();
