/*
 * panel.js: the gateway's control panel, rendered live from GET /v1/gateway/events.
 *
 * Events (docs/api.md, "Live events"): "devices" (every board, on connect), "device" (one board
 * after it changed), "device-removed" ({uuid}), "status" (GET /v1/enm/status), "reservations"
 * (GET /v1/reservations), "evaluations" (the running evaluations with their progress).
 *
 * Everything shown comes from the stream and goes into the page through live.js's DOM helpers
 * (textContent only): a board named "<img src=x onerror=...>" shows exactly that, and nothing
 * runs. Buttons call the gateway's API with picofleet.api (the CSRF header, and the session
 * cookie when the gateway has an API key); the stream then shows what changed.
 *
 * Stable hooks for tests and scripts: a board's row is tr[data-board="<LocalUUID>"], its cells
 * [data-field="name" | "status" | "type" | "firmware" | "commit" | "port" | "local-mode"], its
 * buttons [data-action="identify" | "restart"]; #enm-status, #pause, #run; #live.
 */
(function () {
  "use strict";

  const { el, setText, api, stream, statusClass, statusBadge, showMessage } = window.picofleet;

  const boards = new Map(); // LocalUUID -> device record
  let reservations = [];
  let evaluations = [];
  let enm = null;

  const $ = (id) => document.getElementById(id);
  const PROGRESSING = new Set(["Downloading", "Installing", "Flashing"]); // with a progress bar

  // -- boards ----------------------------------------------------------------------------------

  function byName(a, b) {
    return String(a.Name || a.LocalUUID).localeCompare(String(b.Name || b.LocalUUID));
  }

  function cell(field, label, ...children) {
    return el("td", { data: { field, label } }, ...children);
  }

  function commitCell(record) {
    const commit = record.Commit ? String(record.Commit) : "";
    const target = record.TargetCommit ? String(record.TargetCommit) : "";
    const shown = el("span", { class: "mono", text: commit ? commit.slice(0, 7) : "—", title: commit || null });
    if (!target || target === commit) return cell("commit", "Commit", shown);
    return cell(
      "commit",
      "Commit",
      shown,
      el("span", { class: "hint", text: ` → ${target.slice(0, 7)}`, title: `target ${target}` })
    );
  }

  function actionButton(action, label, uuid) {
    return el("button", {
      type: "button",
      text: label,
      data: { action },
      attrs: { "aria-label": `${label} board ${uuid}` },
      onclick: (event) => act(event.currentTarget, "PUT", `/v1/devices/${encodeURIComponent(uuid)}/${action}`),
    });
  }

  function boardRow(record) {
    const uuid = String(record.LocalUUID);
    const progress =
      PROGRESSING.has(record.Status) && record.Progress && typeof record.Progress.percent === "number"
        ? record.Progress.percent
        : undefined;
    const status = cell("status", "Status", statusBadge(record.Status, progress));
    if (record.StatusReason) {
      status.title = String(record.StatusReason);
      status.appendChild(el("div", { class: "hint reason", text: record.StatusReason }));
    }
    return el(
      "tr",
      { class: `board ${statusClass(record.Status)}`, data: { board: uuid, status: record.Status } },
      cell(
        "name",
        "Board",
        el("span", { class: "name", text: record.Name || uuid }),
        el("div", { class: "mono dim", text: uuid })
      ),
      status,
      cell("type", "Type", record.BoardType || "—"),
      cell("firmware", "Firmware", el("span", { class: "mono", text: record.FirmwareVersion || "—" })),
      commitCell(record),
      cell("port", "Port", el("span", { class: "mono", text: record.Port || "" })),
      cell("local-mode", "Local mode", record.LocalMode ? el("span", { class: "badge warn", text: "local" }) : "—"),
      el(
        "td",
        { class: "actions" },
        actionButton("identify", "Identify", uuid),
        actionButton("restart", "Restart", uuid)
      )
    );
  }

  function renderBoard(record) {
    const uuid = String(record.LocalUUID);
    const body = $("boards");
    const row = boardRow(record);
    const old = body.querySelector(`tr[data-board="${CSS.escape(uuid)}"]`);
    if (old) {
      old.replaceWith(row);
    } else {
      const sorted = [...boards.values()].sort(byName);
      const next = sorted[sorted.findIndex((r) => String(r.LocalUUID) === uuid) + 1];
      const before = next ? body.querySelector(`tr[data-board="${CSS.escape(String(next.LocalUUID))}"]`) : null;
      body.insertBefore(row, before);
    }
    boardsChanged();
  }

  function renderBoards() {
    const body = $("boards");
    body.replaceChildren(...[...boards.values()].sort(byName).map(boardRow));
    boardsChanged();
  }

  function boardsChanged() {
    const empty = $("boards-empty");
    setText(empty, "No boards: plug one in.");
    empty.hidden = boards.size > 0;
    renderReservations(); // they name boards
  }

  // -- ENM status ------------------------------------------------------------------------------

  function renderStatus() {
    const current = enm && enm.currentStatus;
    const target = enm && enm.targetStatus;
    const badge = $("enm-status");
    setText(badge, current || "—");
    badge.className = `status ${statusClass(current === "Running" ? "Idle" : current)}`;
    setText(
      document.querySelector('[data-field="enm-target"]'),
      target && target !== current ? `→ ${target}` : ""
    );
    $("pause").disabled = target === "Paused";
    $("run").disabled = target === "Running";
  }

  // -- reservations and evaluations --------------------------------------------------------------

  function boardLabel(serial) {
    const record = boards.get(String(serial));
    return record && record.Name ? `${record.Name} (${serial})` : String(serial);
  }

  function until(epochSeconds) {
    const when = new Date(epochSeconds * 1000);
    const left = Math.round(epochSeconds - Date.now() / 1000);
    let inText = `in ${Math.round(left / 3600)} h`;
    if (left <= 0) inText = "ending";
    else if (left < 60) inText = `in ${left} s`;
    else if (left < 3600) inText = `in ${Math.round(left / 60)} min`;
    const iso = when.toISOString();
    return el("time", { dateTime: iso, title: iso }, `${when.toLocaleTimeString()} (${inText})`);
  }

  function renderReservations() {
    const byClient = new Map();
    for (const reservation of reservations) {
      const name = String(reservation.name);
      const entry = byClient.get(name) || { name, serials: [], until: 0, states: new Set() };
      entry.serials.push(String(reservation.serial));
      entry.until = Math.max(entry.until, Number(reservation.expires_at) || 0);
      if (reservation.state) entry.states.add(String(reservation.state));
      byClient.set(name, entry);
    }
    const rows = [...byClient.values()]
      .sort((a, b) => a.name.localeCompare(b.name))
      .map((entry) =>
        el(
          "tr",
          { data: { client: entry.name } },
          el(
            "td",
            { data: { field: "name", label: "Who" } },
            entry.name,
            [...entry.states].filter((state) => state !== "ready").map((state) => el("div", { class: "hint", text: state }))
          ),
          el("td", { data: { field: "boards", label: "Boards" } }, entry.serials.map(boardLabel).join(", ")),
          el("td", { data: { field: "until", label: "Until" } }, until(entry.until))
        )
      );
    $("reservations").replaceChildren(...rows);
    $("reservations-empty").hidden = rows.length > 0;
  }

  function renderEvaluations() {
    const rows = evaluations
      .filter((evaluation) => !evaluation.done)
      .map((evaluation) => {
        const units = Number(evaluation.units) || 0;
        const results =
          typeof evaluation.completed === "number"
            ? evaluation.completed
            : Array.isArray(evaluation.results)
              ? evaluation.results.length
              : 0;
        const running = Number(evaluation.running) || 0;
        const failed = Number(evaluation.failed) || 0;
        const percent = units ? (100 * results) / units : 0;
        return el(
          "tr",
          { data: { evaluation: evaluation.evaluation } },
          el("td", { data: { field: "name", label: "Who" } }, evaluation.name || ""),
          el(
            "td",
            { data: { field: "evaluation", label: "Evaluation" } },
            el("span", { class: "mono", text: evaluation.evaluation || "" }),
            evaluation.mode ? el("span", { class: "hint", text: ` ${evaluation.mode}` }) : null
          ),
          el(
            "td",
            { data: { field: "progress", label: "Progress" } },
            statusBadge("Evaluating", percent),
            el("span", {
              class: "percent",
              text: ` ${results} / ${units}${running ? `, ${running} running` : ""}${failed ? `, ${failed} failed` : ""}`,
            })
          )
        );
      });
    $("evaluations").replaceChildren(...rows);
    $("evaluations-empty").hidden = rows.length > 0;
  }

  // -- actions ---------------------------------------------------------------------------------

  async function act(button, method, path, body) {
    button.disabled = true;
    try {
      await api(method, path, body);
      showMessage(`${button.textContent}: done`, "info");
    } catch (error) {
      // api() showed why
    } finally {
      if (button.isConnected) button.disabled = false;
      renderStatus();
    }
  }

  function listOf(data, key) {
    if (Array.isArray(data)) return data;
    if (data && Array.isArray(data[key])) return data[key];
    return [];
  }

  function start() {
    $("pause").addEventListener("click", (event) =>
      act(event.currentTarget, "PUT", "/v1/enm/status", { targetStatus: "Paused" })
    );
    $("run").addEventListener("click", (event) =>
      act(event.currentTarget, "PUT", "/v1/enm/status", { targetStatus: "Running" })
    );
    stream("/v1/gateway/events", {
      devices(data) {
        boards.clear();
        for (const record of listOf(data, "devices")) boards.set(String(record.LocalUUID), record);
        renderBoards();
      },
      device(record) {
        if (!record || record.LocalUUID === undefined) return;
        boards.set(String(record.LocalUUID), record);
        renderBoard(record);
      },
      "device-removed"(data) {
        const uuid = String(data && data.uuid);
        boards.delete(uuid);
        const row = $("boards").querySelector(`tr[data-board="${CSS.escape(uuid)}"]`);
        if (row) row.remove();
        boardsChanged();
      },
      status(data) {
        enm = data;
        renderStatus();
      },
      reservations(data) {
        reservations = listOf(data, "reservations");
        renderReservations();
      },
      evaluations(data) {
        evaluations = listOf(data, "evaluations");
        renderEvaluations();
      },
    }, { check: "/v1/enm/status", loginOn401: false }); // reading needs no key: probe a small route
    setInterval(renderReservations, 15000); // keep "in N min" fresh
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
