/*
 * dashboard.js: a fleet's page, rendered live from GET /v1/fleets/{name}/events.
 *
 * The server sends the page's shell; this script fills it from the stream: a "fleet" event is
 * the whole view (fleet, releases, gateways with their boards) and re-renders everything; a
 * "gateway" event replaces one gateway's card. A click on a board opens its panel: details, pin,
 * environment and config with their precedence (board over release over fleet: the effective
 * value and where it comes from), and its log tail (GET …/logs, then "logs" events of a second
 * stream with logs=UUID&boards=0). Every action is a fetch() of the operator API through
 * picofleet.api (session cookie + CSRF header); the stream then shows the result.
 *
 * Data reaches the DOM only through picofleet.el / textContent: never as markup.
 * Hooks for tests and scripts: [data-gateway=ID], [data-board=LocalUUID], [data-field=...] cells,
 * [data-release=commit], #live.
 */
(function () {
  "use strict";

  const pf = window.picofleet;
  const { el, setText } = pf;
  const fleetName = document.body.dataset.fleet;
  const base = `/v1/fleets/${encodeURIComponent(fleetName)}`;
  const STALE_S = 180; // a gateway long-polls every 50 s: silent for 3 min is stale
  const LOG_LINES_KEPT = 500;

  const view = { fleet: null, releases: [], gateways: new Map() };
  let releaseKey = "";
  let selected = null; // LocalUUID of the board whose panel is open
  let logs = null; // the open log stream

  const $ = (selector, root) => (root || document).querySelector(selector);
  const short = (commit) => (commit ? String(commit).slice(0, 7) : "—");

  function releaseOf(commit) {
    if (!commit) return null;
    return view.releases.find((r) => r.commit === commit) || null;
  }

  function describeRelease(commit) {
    const release = releaseOf(commit);
    if (!release) return short(commit);
    const subject = release.message ? ` ${release.message}` : "";
    return `${short(commit)}${subject}`;
  }

  function boardOf(uuid) {
    for (const gateway of view.gateways.values()) {
      for (const board of gateway.boards || []) {
        if (board.LocalUUID === uuid) return [board, gateway];
      }
    }
    return [null, null];
  }

  // -- the fleet: summary, pin, variables -------------------------------------------------------

  function renderFleet() {
    const fleet = view.fleet;
    if (!fleet) return;
    const summary = $("#summary");
    const target = $('[data-field="target"]', summary);
    setText(target, describeRelease(fleet.target));
    target.title = fleet.target || "";
    setText($('[data-field="latest"]', summary), describeRelease(fleet.latest));
    setText($('[data-field="deploy_branch"]', summary), fleet.deploy_branch);
    const pinned = $('[data-field="pinned"]', summary);
    setText(pinned, fleet.pinned ? `pinned to ${short(fleet.pinned)}` : "follows the deploy branch");
    pinned.dataset.pinned = fleet.pinned || "";
    $("#fleet-unpin").disabled = !fleet.pinned;
    renderFleetVariables("env", fleet.env || {});
    renderFleetVariables("config", fleet.config || {});
  }

  function renderFleetVariables(kind, variables) {
    const table = $(`#fleet-${kind}`);
    const keys = Object.keys(variables).sort();
    const rows = keys.map((key) =>
      el(
        "tr",
        { data: { var: key } },
        el("td", { class: "mono key", data: { label: "Name" }, text: key }),
        el("td", { class: "mono value", data: { label: "Value", field: "value" }, text: variables[key] }),
        el(
          "td",
          { class: "actions" },
          el("button", {
            type: "button",
            class: "danger small",
            text: "Delete",
            title: `delete the fleet's ${kind} variable ${key}`,
            onclick: () => act(() => pf.api("DELETE", `${base}/${kind}/${encodeURIComponent(key)}`)),
          })
        )
      )
    );
    table.replaceChildren(
      ...(rows.length ? rows : [el("tr", {}, el("td", { class: "empty", text: `no fleet ${kind} variables` }))])
    );
  }

  // -- releases ------------------------------------------------------------------------------------

  function whatItGets(entry) {
    const parts = [];
    if (entry.firmware) parts.push(el("span", { class: "asset" }, el("span", { class: "what", text: "firmware " }), entry.firmware));
    if (entry.fpga) {
      const fpga = typeof entry.fpga === "object" ? entry.fpga.path || entry.fpga.file || short(entry.fpga.sha256) : entry.fpga;
      parts.push(el("span", { class: "asset" }, el("span", { class: "what", text: "fpga " }), String(fpga)));
    }
    const env = entry.environment || {};
    const envKeys = Object.keys(env).sort();
    if (envKeys.length) {
      parts.push(
        el("span", { class: "asset" }, el("span", { class: "what", text: "env " }), envKeys.map((k) => `${k}=${env[k]}`).join(" "))
      );
    }
    const config = entry.config || {};
    const configKeys = Object.keys(config).sort();
    if (configKeys.length) {
      parts.push(
        el("span", { class: "asset" }, el("span", { class: "what", text: "config " }), configKeys.map((k) => `${k}=${config[k]}`).join(" "))
      );
    }
    return parts;
  }

  function renderReleases() {
    const fleet = view.fleet || {};
    const rows = [...view.releases].reverse().map((release) => {
      const types = Object.keys(release.boards || {}).sort();
      const isTarget = release.commit === fleet.target;
      return el(
        "tr",
        { class: isTarget ? "target" : "", data: { release: release.commit } },
        el(
          "td",
          { class: "mono", data: { label: "Commit", field: "commit" }, title: release.commit },
          short(release.commit),
          isTarget ? el("span", { class: "badge target", text: "target" }) : null,
          release.commit === fleet.pinned ? el("span", { class: "badge pin", text: "pinned" }) : null
        ),
        el("td", { class: "subject", data: { label: "Message", field: "message" }, text: release.message || "" }),
        el(
          "td",
          { data: { label: "When" } },
          pf.timeEl(release.created),
          release.ref ? el("span", { class: "dim mono ref", text: ` ${release.ref.replace(/^refs\/(heads|tags)\//, "")}` }) : null
        ),
        el(
          "td",
          { data: { label: "Board types", field: "boards" } },
          types.map((type) => el("div", { class: "type-line" }, el("span", { class: "type", text: type }), whatItGets(release.boards[type])))
        ),
        el(
          "td",
          { class: "actions" },
          el("button", {
            type: "button",
            class: "small",
            text: "Pin fleet",
            disabled: release.commit === fleet.pinned,
            title: `pin the whole fleet to ${short(release.commit)}`,
            onclick: () => act(() => pf.api("PUT", `${base}/pin`, { commit: release.commit })),
          })
        )
      );
    });
    $("#releases").replaceChildren(
      ...(rows.length ? rows : [el("tr", {}, el("td", { class: "empty", text: "no releases yet: git push one" }))])
    );
    const key = view.releases.map((r) => r.commit).join(",");
    if (key !== releaseKey) {
      releaseKey = key;
      fillReleaseSelect($("#fleet-pin-select"));
      fillReleaseSelect($("#board-pin-select"));
    }
  }

  function fillReleaseSelect(select) {
    const current = select.value;
    const options = [el("option", { value: "", text: "choose a release…" })];
    for (const release of [...view.releases].reverse()) {
      const label = `${short(release.commit)} ${release.message || ""}`.trim();
      options.push(el("option", { value: release.commit, text: label.length > 70 ? `${label.slice(0, 69)}…` : label }));
    }
    select.replaceChildren(...options);
    if (view.releases.some((r) => r.commit === current)) select.value = current;
  }

  // -- gateways and boards ------------------------------------------------------------------------

  function boardRow(board) {
    const uuid = board.LocalUUID;
    const failed = board.FailedRelease;
    const commitCell = el(
      "td",
      { class: "mono commit", data: { label: "Commit", field: "commit", commit: board.Commit || "", target: board.target_commit || "" } },
      el("span", { class: "current", text: short(board.Commit), title: board.Commit || "" })
    );
    if (board.converged) {
      commitCell.appendChild(el("span", { class: "converged", text: "✓", title: "on target", data: { field: "converged" } }));
    } else if (board.target_commit) {
      commitCell.appendChild(
        el("span", { class: "pending", text: ` → ${short(board.target_commit)}`, title: `target ${board.target_commit}` })
      );
    }
    const row = el(
      "tr",
      {
        class: `board ${pf.statusClass(board.Status)}${uuid === selected ? " selected" : ""}`,
        data: { board: uuid, status: board.Status || "" },
        onclick: (event) => {
          if (!event.target.closest("button, a, select, input")) selectBoard(uuid);
        },
      },
      el(
        "td",
        { data: { label: "Board", field: "name" } },
        el("button", {
          type: "button",
          class: "link board-open",
          text: board.Name || uuid,
          title: `open ${uuid}`,
          onclick: () => selectBoard(uuid),
        }),
        el("div", { class: "dim mono uuid", text: uuid })
      ),
      el("td", { data: { label: "Type", field: "type" }, text: board.BoardType || "" }),
      el("td", { data: { label: "Status", field: "status" } }, pf.statusBadge(board.Status, board.Progress)),
      el("td", { data: { label: "Firmware", field: "firmware" }, text: board.FirmwareVersion || "—" }),
      commitCell,
      el(
        "td",
        { data: { label: "Mode", field: "local_mode" } },
        board.LocalMode ? el("span", { class: "badge warn", text: "local", title: "local mode: its gateway leaves it alone" }) : "fleet"
      ),
      el(
        "td",
        { data: { label: "Failed release", field: "failed" } },
        failed
          ? [
              el("span", { class: "badge bad mono", text: short(failed.commit), title: failed.reason || "" }),
              el("span", { class: "reason", text: ` ${failed.reason || ""}` }),
              el("button", {
                type: "button",
                class: "small",
                text: "Retry",
                data: { action: "retry" },
                onclick: () => act(() => pf.api("POST", `${base}/boards/${encodeURIComponent(uuid)}/retry`), "retry asked"),
              }),
            ]
          : "—"
      ),
      el(
        "td",
        { class: "mono", data: { label: "Pin", field: "pin", pin: board.pin || "" } },
        board.pin ? el("span", { class: "badge pin", text: short(board.pin), title: board.pin }) : "—"
      )
    );
    return row;
  }

  function gatewayCard(gateway) {
    const boards = gateway.boards || [];
    const online = boards.filter((b) => b.online).length;
    const seen = pf.age(gateway.last_seen);
    const stale = seen === null || seen > STALE_S;
    const card = el(
      "article",
      { class: `gateway${stale ? " stale" : ""}`, data: { gateway: gateway.gateway } },
      el(
        "header",
        {},
        el("h3", { text: gateway.name || gateway.gateway }),
        el("span", { class: "dim mono", text: gateway.name ? gateway.gateway : "" }),
        el("span", { class: "seen" }, "last seen ", pf.timeEl(gateway.last_seen, { data: { field: "last_seen" } })),
        el("span", { class: "badge off stale-mark", text: "stale", title: `no word for over ${STALE_S / 60} min` }),
        el("span", { class: "dim counts", text: `${online}/${boards.length} online` })
      )
    );
    if (boards.length) {
      card.appendChild(
        el(
          "table",
          { class: "grid boards" },
          el(
            "thead",
            {},
            el("tr", {}, ["Board", "Type", "Status", "Firmware", "Commit", "Mode", "Failed release", "Pin"].map((h) => el("th", { text: h })))
          ),
          el("tbody", {}, boards.map(boardRow))
        )
      );
    } else {
      card.appendChild(el("p", { class: "empty", text: "no boards reported" }));
    }
    return card;
  }

  // A fleet of 1,000 gateways: the first cards are rendered at once, the rest in chunks after
  // the first paint (a newer "fleet" event abandons an older render).
  const FIRST_CARDS = 30;
  const CARDS_PER_CHUNK = 150;
  let renderRun = 0;
  const pendingCards = new Set();

  function renderGateways(done) {
    const run = ++renderRun;
    const container = $("#gateways");
    const ids = [...view.gateways.keys()];
    pendingCards.clear();
    if (!ids.length) {
      container.replaceChildren(el("p", { class: "empty", text: "No gateways yet: provision one with the fleet's key." }));
      renderCounts();
      if (done) done();
      return;
    }
    for (const id of ids.slice(FIRST_CARDS)) pendingCards.add(id);
    const fragment = document.createDocumentFragment();
    for (const id of ids.slice(0, FIRST_CARDS)) fragment.appendChild(gatewayCard(view.gateways.get(id)));
    container.replaceChildren(fragment);
    renderCounts();
    let next = FIRST_CARDS;
    const more = () => {
      if (run !== renderRun) return;
      const chunk = document.createDocumentFragment();
      for (const id of ids.slice(next, next + CARDS_PER_CHUNK)) {
        pendingCards.delete(id);
        const gateway = view.gateways.get(id);
        if (gateway) chunk.appendChild(gatewayCard(gateway));
      }
      next += CARDS_PER_CHUNK;
      container.appendChild(chunk);
      if (next < ids.length) setTimeout(more, 0);
      else if (done) done();
    };
    if (next < ids.length) setTimeout(more, 0);
    else if (done) done();
  }

  function renderGateway(gateway) {
    if (pendingCards.has(gateway.gateway)) return; // its chunk is still to come: rendered then
    const container = $("#gateways");
    const card = gatewayCard(gateway);
    const old = container.querySelector(`[data-gateway="${CSS.escape(gateway.gateway)}"]`);
    if (old) old.replaceWith(card);
    else {
      const empty = container.querySelector(":scope > .empty");
      if (empty) empty.remove();
      container.appendChild(card);
    }
    renderCounts();
  }

  function renderCounts() {
    let boards = 0;
    let online = 0;
    let converged = 0;
    for (const gateway of view.gateways.values()) {
      for (const board of gateway.boards || []) {
        boards += 1;
        if (board.online) online += 1;
        if (board.converged) converged += 1;
      }
    }
    setText(
      $('[data-field="counts"]', $("#summary")),
      `${online}/${boards} online · ${converged} on target · ${view.gateways.size} gateway${view.gateways.size === 1 ? "" : "s"}`
    );
  }

  // -- a board's panel ----------------------------------------------------------------------------

  function sourceOf(kind, key, board) {
    const own = kind === "env" ? board.board_env : board.board_config;
    if (own && key in own) return "board";
    const release = releaseOf(board.target_commit);
    const entry = release && release.boards ? release.boards[board.BoardType] : null;
    const fromRelease = entry ? (kind === "env" ? entry.environment : entry.config) : null;
    if (fromRelease && key in fromRelease) return "release";
    return "fleet";
  }

  function shadowed(kind, key, board, source) {
    // the lower layers' values the effective one overrides
    const out = [];
    const fleetVars = (view.fleet && view.fleet[kind]) || {};
    const release = releaseOf(board.target_commit);
    const entry = release && release.boards ? release.boards[board.BoardType] : null;
    const releaseVars = (entry && (kind === "env" ? entry.environment : entry.config)) || {};
    if (source === "board" && key in releaseVars) out.push(`release: ${releaseVars[key]}`);
    if ((source === "board" || source === "release") && key in fleetVars) out.push(`fleet: ${fleetVars[key]}`);
    return out.join(" · ");
  }

  function renderBoardVariables(kind, board) {
    const effective = (kind === "env" ? board.target_environment : board.target_config) || {};
    const own = (kind === "env" ? board.board_env : board.board_config) || {};
    const reported = (kind === "env" ? board.Environment : board.Config) || {};
    const keys = [...new Set([...Object.keys(effective), ...Object.keys(own)])].sort();
    const head = el(
      "tr",
      {},
      ["Name", "Effective value", "From", "Overrides", ""].map((h) => el("th", { text: h }))
    );
    const rows = keys.map((key) => {
      const source = key in own ? "board" : sourceOf(kind, key, board);
      const value = key in effective ? effective[key] : own[key];
      const applied = reported[key] === value;
      return el(
        "tr",
        { data: { var: key, source } },
        el("td", { class: "mono key", data: { label: "Name" }, text: key }),
        el(
          "td",
          { class: "mono value", data: { label: "Value", field: "value" } },
          value,
          applied ? null : el("span", { class: "pending", text: " (not applied yet)", title: "the board reports another value" })
        ),
        el("td", { data: { label: "From", field: "source" } }, el("span", { class: `badge src-${source}`, text: source })),
        el("td", { class: "mono dim", data: { label: "Overrides" }, text: shadowed(kind, key, board, source) }),
        el(
          "td",
          { class: "actions" },
          key in own
            ? el("button", {
                type: "button",
                class: "danger small",
                text: "Delete",
                title: `delete the board's ${kind} variable ${key}`,
                onclick: () =>
                  act(() => pf.api("DELETE", `${base}/boards/${encodeURIComponent(board.LocalUUID)}/${kind}/${encodeURIComponent(key)}`)),
              })
            : null
        )
      );
    });
    $(`#board-${kind}`).replaceChildren(
      el("thead", {}, head),
      el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { class: "empty", text: `no ${kind} variables` })))
    );
  }

  function renderBoardPanel() {
    const panel = $("#board");
    if (!selected) {
      panel.hidden = true;
      return;
    }
    const [board, gateway] = boardOf(selected);
    panel.hidden = false;
    panel.dataset.selected = selected;
    if (!board) {
      setText($('[data-field="name"]', panel), "Board no longer reported");
      setText($('[data-field="uuid"]', panel), selected);
      $("#board-facts").replaceChildren();
      return;
    }
    setText($('[data-field="name"]', panel), board.Name || board.LocalUUID);
    setText($('[data-field="uuid"]', panel), board.LocalUUID);
    const facts = [
      ["Gateway", gateway.name || gateway.gateway],
      ["Type", board.BoardType],
      ["Status", pf.statusBadge(board.Status, board.Progress)],
      ["Firmware", board.FirmwareVersion || "—"],
      ["Commit", describeRelease(board.Commit)],
      ["Target", `${describeRelease(board.target_commit)}${board.converged ? " ✓ on target" : ""}`],
      ["Pin", board.pin ? describeRelease(board.pin) : "none (follows the fleet)"],
      ["Mode", board.LocalMode ? "local (its gateway leaves it alone)" : "fleet"],
    ];
    if (board.FailedRelease) {
      facts.push(["Failed release", `${short(board.FailedRelease.commit)}: ${board.FailedRelease.reason || ""}`]);
    }
    $("#board-facts").replaceChildren(
      ...facts.flatMap(([label, value]) => [el("dt", { text: label }), el("dd", { data: { fact: label.toLowerCase() } }, value)])
    );
    $("#board-unpin").disabled = !board.pin;
    renderBoardVariables("env", board);
    renderBoardVariables("config", board);
  }

  function logLine(line) {
    const time = line.time ? String(line.time).replace(/^.*T/, "").replace(/(\.\d+)?Z?$/, "") : "";
    return el(
      "li",
      { class: `level-${/^[a-z]+$/.test(line.level || "") ? line.level : "info"}`, data: { key: logKey(line) } },
      el("span", { class: "time mono", text: time, title: line.time || "" }),
      el("span", { class: "text", text: line.text })
    );
  }

  function appendLogLines(lines) {
    const list = $("#board-log");
    const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
    for (const line of lines) list.appendChild(logLine(line));
    while (list.children.length > LOG_LINES_KEPT) list.firstChild.remove();
    if (atBottom) list.scrollTop = list.scrollHeight;
  }

  function logKey(line) {
    return `${line.time}|${line.level}|${line.text}`;
  }

  function followLogs(uuid) {
    if (logs) logs.close();
    const list = $("#board-log");
    list.replaceChildren();
    const state = $('[data-field="log-state"]', $("#board"));
    let buffered = [];
    let loaded = false;

    function showNew(lines) {
      // lines the list shows already (the tail and the stream overlap) are left out
      const shown = new Set(Array.from(list.children, (item) => item.dataset.key));
      const fresh = lines.filter((line) => !shown.has(logKey(line)));
      appendLogLines(fresh);
    }

    function loadTail() {
      // at every (re)connection, once the stream holds our place: the last lines, then what came
      // on the stream meanwhile; so no line is lost between the two, nor during an outage
      loaded = false;
      pf.api("GET", `${base}/boards/${encodeURIComponent(uuid)}/logs?limit=200`)
        .then((lines) => {
          if (selected !== uuid) return;
          for (const item of list.querySelectorAll("li.empty")) item.remove();
          showNew(lines || []);
        })
        .catch(() => {})
        .finally(() => {
          if (selected !== uuid) return;
          showNew(buffered);
          buffered = [];
          loaded = true;
          if (!list.children.length) list.appendChild(el("li", { class: "empty", text: "no log lines yet" }));
        });
    }

    logs = pf.stream(
      `${base}/events?logs=${encodeURIComponent(uuid)}&boards=0`,
      {
        logs: (data) => {
          if (data.board !== uuid || selected !== uuid) return;
          const lines = data.lines || [];
          if (data.dropped) lines.unshift({ time: "", level: "warning", text: `… ${data.dropped} lines skipped` });
          if (loaded) {
            for (const item of list.querySelectorAll("li.empty")) item.remove();
            appendLogLines(lines);
          } else buffered.push(...lines);
        },
      },
      { indicator: state, check: `${base}`, onOpen: loadTail }
    );
  }

  function selectBoard(uuid) {
    if (selected === uuid && !$("#board").hidden) return;
    selected = uuid;
    for (const row of document.querySelectorAll("tr.board.selected")) row.classList.remove("selected");
    const row = document.querySelector(`tr[data-board="${CSS.escape(uuid)}"]`);
    if (row) row.classList.add("selected");
    $("#board-pin-select").value = "";
    renderBoardPanel();
    followLogs(uuid);
    const panel = $("#board");
    if (panel.scrollIntoView && window.innerWidth < 1100) panel.scrollIntoView({ block: "start" });
  }

  function closeBoard() {
    selected = null;
    if (logs) logs.close();
    logs = null;
    for (const row of document.querySelectorAll("tr.board.selected")) row.classList.remove("selected");
    renderBoardPanel();
  }

  // -- actions ------------------------------------------------------------------------------------

  async function act(call, done) {
    try {
      await call();
      if (done) pf.showMessage(done, "info");
    } catch (error) {
      // picofleet.api showed the reason
    }
  }

  function wireForms() {
    $("#fleet-pin-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const commit = $("#fleet-pin-select").value;
      if (!commit) return pf.showMessage("choose a release to pin the fleet to");
      act(() => pf.api("PUT", `${base}/pin`, { commit }));
    });
    $("#fleet-unpin").addEventListener("click", () => act(() => pf.api("DELETE", `${base}/pin`)));
    $("#board-pin-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const commit = $("#board-pin-select").value;
      if (!selected) return;
      if (!commit) return pf.showMessage("choose a release to pin the board to");
      act(() => pf.api("PUT", `${base}/boards/${encodeURIComponent(selected)}/pin`, { commit }), `board pinned to ${short(commit)}`);
    });
    $("#board-unpin").addEventListener("click", () => {
      if (selected) act(() => pf.api("DELETE", `${base}/boards/${encodeURIComponent(selected)}/pin`));
    });
    $("#board-close").addEventListener("click", closeBoard);
    for (const form of document.querySelectorAll("form.var-form")) {
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        const key = form.elements.key.value.trim();
        const value = form.elements.value.value;
        const { kind, scope } = form.dataset;
        if (!key) return;
        let path = `${base}/${kind}/${encodeURIComponent(key)}`;
        if (scope === "board") {
          if (!selected) return;
          path = `${base}/boards/${encodeURIComponent(selected)}/${kind}/${encodeURIComponent(key)}`;
        }
        act(async () => {
          await pf.api("PUT", path, { value });
          form.reset();
        });
      });
    }
  }

  // -- the stream -----------------------------------------------------------------------------------

  function onFleet(data) {
    view.fleet = data.fleet;
    view.releases = data.releases || [];
    view.gateways = new Map((data.gateways || []).map((g) => [g.gateway, g]));
    renderFleet();
    renderReleases();
    renderBoardPanel();
    delete document.body.dataset.loaded;
    renderGateways(() => {
      document.body.dataset.loaded = "true"; // every gateway's card is on the page
    });
  }

  function onGateway(gateway) {
    view.gateways.set(gateway.gateway, gateway);
    renderGateway(gateway);
    if (selected && (gateway.boards || []).some((b) => b.LocalUUID === selected)) renderBoardPanel();
  }

  function markStale(node, seconds) {
    if (node.dataset.field !== "last_seen") return;
    const card = node.closest("[data-gateway]");
    if (card) card.classList.toggle("stale", seconds === null || seconds > STALE_S);
  }

  wireForms();
  pf.stream(`${base}/events`, { fleet: onFleet, gateway: onGateway }, { check: base });
  setInterval(() => pf.tickTimes(document, markStale), 5000);
})();
