/*
 * live.js: what both picofleet pages (the fleet dashboard and the gateway control panel) stand on.
 *
 * - picofleet.el(tag, props, ...children): builds DOM with DOM APIs only. Text goes in as
 *   textContent / text nodes, never as markup: a board name, a log line, an env value or a
 *   commit message containing "<script>" shows literally and never runs.
 * - picofleet.setText(node, value): textContent, only when it changed (cheap re-renders).
 * - picofleet.ago(iso) / picofleet.tickTimes(root): relative times ("12 s ago"), kept fresh on
 *   every element with a data-time attribute.
 * - picofleet.api(method, path, body): fetch() with the session cookie and the CSRF header
 *   (X-Picofleet-Request) that cookie-authenticated changes need; errors are shown in #messages
 *   and thrown; a 401 (the session expired) goes back to the login form.
 * - picofleet.stream(url, handlers, options): an EventSource with a visible live indicator
 *   (#live: "live" / "reconnecting…"), reconnecting by itself; when the service refuses the
 *   stream (an expired session) the page goes back to the login form.
 * - picofleet.statusClass(status): the colour class of a board or gateway status.
 *
 * No third-party code, no inline script (the pages' Content-Security-Policy forbids it).
 */
(function () {
  "use strict";

  const CSRF_HEADER = "X-Picofleet-Request";

  /** An element: props sets className/class, text, dataset, attributes (attrs), on* listeners. */
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    if (props) {
      for (const [key, value] of Object.entries(props)) {
        if (value === undefined || value === null || value === false) continue;
        if (key === "class" || key === "className") node.className = value;
        else if (key === "text") node.textContent = String(value);
        else if (key === "data") {
          for (const [name, v] of Object.entries(value)) {
            if (v !== undefined && v !== null) node.dataset[name] = String(v);
          }
        } else if (key === "attrs") {
          for (const [name, v] of Object.entries(value)) {
            if (v !== undefined && v !== null && v !== false) node.setAttribute(name, v === true ? "" : String(v));
          }
        } else if (key.startsWith("on") && typeof value === "function") {
          node.addEventListener(key.slice(2), value);
        } else if (key in node && typeof value !== "object") {
          node[key] = value; // plain properties: type, value, title, disabled, hidden, href ...
        } else {
          node.setAttribute(key, String(value));
        }
      }
    }
    append(node, children);
    return node;
  }

  function append(node, children) {
    for (const child of children) {
      if (child === undefined || child === null || child === false) continue;
      if (Array.isArray(child)) append(node, child);
      else if (child instanceof Node) node.appendChild(child);
      else node.appendChild(document.createTextNode(String(child)));
    }
  }

  /** Set node's textContent to value ("" for null) unless it already shows it. */
  function setText(node, value) {
    const text = value === undefined || value === null ? "" : String(value);
    if (node && node.textContent !== text) node.textContent = text;
  }

  /** Seconds since an ISO time (null when there is none or it does not parse). */
  function age(iso) {
    if (!iso) return null;
    const then = Date.parse(iso);
    if (Number.isNaN(then)) return null;
    return Math.max(0, (Date.now() - then) / 1000);
  }

  /** "just now", "12 s ago", "5 min ago", "3 h ago", "2 d ago"; "never" for no time. */
  function ago(iso) {
    const seconds = age(iso);
    if (seconds === null) return "never";
    if (seconds < 2) return "just now";
    if (seconds < 60) return `${Math.floor(seconds)} s ago`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
    if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
    return `${Math.floor(seconds / 86400)} d ago`;
  }

  /** An element showing the relative time of iso, with the exact time as its tooltip; kept
   * fresh by tickTimes. */
  function timeEl(iso, props) {
    const node = el("time", Object.assign({ text: ago(iso) }, props || {}));
    if (iso) {
      node.dataset.time = iso;
      node.dateTime = iso;
      node.title = iso;
    }
    return node;
  }

  /** Refresh every [data-time] under root; onTick(node, seconds) may mark staleness. */
  function tickTimes(root, onTick) {
    for (const node of (root || document).querySelectorAll("[data-time]")) {
      setText(node, ago(node.dataset.time));
      if (onTick) onTick(node, age(node.dataset.time));
    }
  }

  const messages = () => document.getElementById("messages");

  /** Show a message in #messages (kind "error" or "info"); it goes after a while or on click. */
  function showMessage(text, kind) {
    const box = messages();
    if (!box) return;
    const item = el("p", { class: `message ${kind || "error"}`, text, title: "click to dismiss" });
    item.addEventListener("click", () => item.remove());
    box.appendChild(item);
    while (box.children.length > 4) box.firstChild.remove();
    setTimeout(() => item.remove(), kind === "info" ? 4000 : 12000);
  }

  function toLogin() {
    window.location.assign("/");
  }

  /** fetch() an API route with the session cookie and the CSRF header; the parsed JSON answer
   * (null when empty). On an error answer its message is shown and an Error thrown. */
  async function api(method, path, body) {
    const headers = { [CSRF_HEADER]: "1", Accept: "application/json" };
    const init = { method, headers, credentials: "same-origin", cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (error) {
      showMessage(`${method} ${path}: the service cannot be reached (${error.message})`);
      throw error;
    }
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (error) {
      data = null;
    }
    if (!response.ok) {
      const reason = data && typeof data.error === "string" ? data.error : text || response.statusText;
      if (response.status === 401 && api.loginOn401) {
        showMessage("your session ended: sign in again");
        setTimeout(toLogin, 800);
      } else {
        showMessage(`${method} ${path}: ${response.status} ${reason}`);
      }
      const error = new Error(reason);
      error.status = response.status;
      throw error;
    }
    return data;
  }
  api.loginOn401 = true;

  function setLive(indicator, state, text) {
    if (!indicator) return;
    indicator.dataset.state = state;
    setText(indicator, text);
  }

  /**
   * Follow a Server-Sent Events stream. handlers: {eventName: function(data)} (data parsed
   * from JSON). options.indicator: the element showing "live"/"reconnecting…" (default #live;
   * null for none); options.check: a URL answering 401 once the session is gone (default: the
   * stream's own URL); options.loginOn401 (default true); options.onOpen: called at every
   * (re)connection, after the service subscribed this reader (load what the stream does not
   * replay there, e.g. a log tail). The wait before reconnecting doubles up to 15 s and starts
   * over only after a connection that lasted (a service that hangs up at once is not hammered).
   * Returns {close()}.
   */
  const STABLE_MS = 5000;

  function stream(url, handlers, options) {
    const opts = Object.assign({ loginOn401: true }, options || {});
    const indicator = opts.indicator === undefined ? document.getElementById("live") : opts.indicator;
    let source = null;
    let closed = false;
    let retry = 1000;
    let timer = null;
    let openedAt = 0;

    function open() {
      if (closed) return;
      source = new EventSource(url, { withCredentials: true });
      source.addEventListener("open", () => {
        openedAt = Date.now();
        setLive(indicator, "live", "live");
        if (opts.onOpen) opts.onOpen();
      });
      for (const [name, handler] of Object.entries(handlers)) {
        source.addEventListener(name, (event) => {
          let data;
          try {
            data = JSON.parse(event.data);
          } catch (error) {
            return;
          }
          handler(data);
        });
      }
      source.addEventListener("error", () => {
        if (closed) return;
        if (openedAt && Date.now() - openedAt > STABLE_MS) retry = 1000;
        openedAt = 0;
        setLive(indicator, "reconnecting", "reconnecting…");
        if (source.readyState === EventSource.CLOSED) {
          // the service answered but refused (an expired session: 401) or is restarting
          source = null;
          recheck();
        }
      });
    }

    async function recheck() {
      try {
        const response = await fetch(opts.check || url, {
          method: "GET",
          credentials: "same-origin",
          cache: "no-store",
          headers: { Accept: "application/json" },
          signal: AbortSignal.timeout ? AbortSignal.timeout(5000) : undefined,
        });
        if (response.body) response.body.cancel().catch(() => {});
        if (response.status === 401 && opts.loginOn401) {
          setLive(indicator, "offline", "signed out");
          toLogin();
          return;
        }
      } catch (error) {
        // unreachable: try again below
      }
      timer = setTimeout(open, retry);
      retry = Math.min(retry * 2, 15000);
    }

    open();
    return {
      close() {
        closed = true;
        if (timer) clearTimeout(timer);
        if (source) source.close();
      },
    };
  }

  const STATUS_CLASSES = {
    Idle: "ok",
    Downloading: "busy",
    Installing: "busy",
    Flashing: "busy",
    Starting: "busy",
    Stopping: "busy",
    Bootloader: "warn",
    Paused: "warn",
    running: "ok",
    paused: "warn",
    Offline: "off",
    Broken: "bad",
    Failed: "bad",
    Reserved: "eval",
    Evaluating: "eval",
  };

  /** The colour class of a status: ok (green), busy (blue), warn (amber), off (grey), bad (red),
   * eval (violet), unknown. */
  function statusClass(status) {
    return STATUS_CLASSES[status] || "unknown";
  }

  /** A status badge (and a progress bar when percent is a number). */
  function statusBadge(status, percent) {
    const badge = el("span", { class: `status ${statusClass(status)}`, text: status || "unknown" });
    if (typeof percent !== "number") return badge;
    const clamped = Math.max(0, Math.min(100, percent));
    const bar = el("span", { class: "bar" });
    bar.style.width = `${clamped}%`; // CSSOM: allowed by the pages' CSP, unlike a style attribute
    return el(
      "span",
      { class: "status-with-progress" },
      badge,
      el(
        "span",
        {
          class: "progress",
          attrs: { role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": Math.round(clamped) },
        },
        bar
      ),
      el("span", { class: "percent", text: `${Math.round(clamped)} %` })
    );
  }

  window.picofleet = {
    CSRF_HEADER,
    el,
    setText,
    age,
    ago,
    timeEl,
    tickTimes,
    showMessage,
    api,
    stream,
    statusClass,
    statusBadge,
  };
})();
