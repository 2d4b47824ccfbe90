// Cradle's dashboard (dashboard/README.md): one account's clients, connections, sessions and
// events, live. Every HTTP call goes through the client library's CradleApi (served beside
// this file as /dashboard/cradle.js); the live path is the account's event stream, and
// polling is only the fallback of a server without it.

import { CradleApi } from "./cradle.js";

/** Where the sign-in is kept: this tab's session storage. */
const STORAGE_KEY = "cradle.dashboard";
/** Polling period when the server has no event stream. */
const POLL_MS = 3000;
/** How often "since" and "ago" are written again. */
const AGO_REFRESH_MS = 5000;
/** How long the outcome of a kick stays beside its button. */
const FLASH_MS = 15000;
/** Periodic refresh of the lists the stream does not carry (peers, replicas). */
const CONNECTIONS_REFRESH_MS = 15000;
const SESSIONS_REFRESH_MS = 60000;
const HISTORY_REFRESH_MS = 60000;
/** The timeline's window. */
const DAY_MS = 24 * 3600 * 1000;
/** Events kept in the list. */
const MAX_EVENTS = 200;
/** Pages of live connections read at most (100 rows each). */
const MAX_CONNECTION_PAGES = 10;
/** A valid id (topics.md). */
const ID = /^[A-Za-z0-9_.:@-]{1,128}$/;

// ---- DOM helpers ----

const $ = (selector) => document.querySelector(selector);

/**
 * An HTML element with attributes (`class`, `data-*`, `title`, … ; null values left out) and
 * children (nodes or text).
 */
function el(tag, attrs = {}, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** An SVG element, as `el`. */
function svg(tag, attrs = {}, ...children) {
  return build(document.createElementNS("http://www.w3.org/2000/svg", tag), attrs, children);
}

/** Sets `attrs` on `node` and appends `children`. */
function build(node, attrs, children) {
  for (const [name, value] of Object.entries(attrs)) {
    if (value != null && value !== false) node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child != null) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

/** Replaces the rows of `table`'s body, and shows its "empty" line when there are none. */
function fillTable(id, rows) {
  $(`#${id} tbody`).replaceChildren(...rows);
  $(`[data-empty-for="${id}"]`).hidden = rows.length > 0;
}

// ---- formatting ----

/** Local wall-clock time of Unix milliseconds: `14:03:07`. */
function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
}

/** Local date and time, for titles. */
function stamp(ms) {
  return new Date(ms).toLocaleString();
}

/** A length of time: `42 s`, `5 min`, `3 h 10 min`, `2 d 4 h`. */
function span(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min`;
  const h = Math.floor(m / 60);
  if (h < 48) return m % 60 ? `${h} h ${m % 60} min` : `${h} h`;
  return `${Math.floor(h / 24)} d ${h % 24} h`;
}

/** `<time>` showing how long ago `ms` was, with the date in its title. */
function ago(ms) {
  if (ms == null) return "—";
  return el("time", { datetime: new Date(ms).toISOString(), title: stamp(ms) }, `${span(Date.now() - ms)} ago`);
}

/** How a connection came to be known: `both`, `reported`, `observed` or `unknown`. */
function provenanceOf(p) {
  if (!p) return "unknown";
  if (p.reported && p.observed) return "both";
  return p.reported ? "reported" : p.observed ? "observed" : "unknown";
}

const PROVENANCE_TEXT = {
  both: "reported by the device",
  reported: "reported by the device",
  observed: "only observed by the broker",
  unknown: "—",
};

const PROVENANCE_TITLE = {
  both: "The broker's edge saw the connection and the device published its `connected` status.",
  reported: "The device published its `connected` status.",
  observed: "The broker's edge saw the connection; the device never published a `connected` status on it.",
  unknown: "Not known yet: no event or history of this connection seen by this page.",
};

// ---- errors ----

/**
 * What to tell the user about a failed request of this account's data: the answer's status and
 * code in words. `api` probes a request that got no answer (refused origin or no server).
 */
async function explain(error, api, account) {
  switch (error.status) {
    case 401:
      return `The server refused this token (401 unauthorized): ${error.message}`;
    case 403:
      return `This token may not read account "${account}" (403 ${error.code || "forbidden"}): ${error.message}`;
    case 404:
      return error.code === "account_not_found"
        ? `There is no account "${account}" (404).`
        : `${api.baseUrl} does not look like Cradle's HTTP API (404 on the account's routes).`;
    case 0:
      if (error.code === "timeout") return `${api.baseUrl} did not answer in time.`;
      return (await api.reachable())
        ? `${api.baseUrl} answers, but refuses this page: its origin (${location.origin}) is not in the server's http.allowed_origins.`
        : `Cannot reach ${api.baseUrl}: the server or the network is down.`;
    default:
      return `The server answered ${error.status}${error.code ? ` ${error.code}` : ""}: ${error.message}`;
  }
}

/** Whether `error` says the credential itself is refused: the board cannot go on. */
function credentialRefused(error) {
  return error.status === 401 || error.status === 403;
}

// ---- the board ----

/**
 * One signed-in account on screen: the clients, timelines, connections, sessions and events,
 * kept up to date from the event stream (or by polling without one). `stop()` ends every
 * request and timer.
 */
class Board {
  /**
   * @param {CradleApi} api
   * @param {string} account
   * @param {(message: string) => void} onRefused  the credential was refused: sign out
   */
  constructor(api, account, onRefused) {
    this.api = api;
    this.account = account;
    this.onRefused = onRefused;
    this.base = `/v1/accounts/${encodeURIComponent(account)}`;
    /** client_id → the row of GET …/clients, kept current by events. */
    this.clients = new Map();
    /** connection_id → {observed, reported}, from events and history. */
    this.provenance = new Map();
    /** client_id → its history answer (null: none yet). */
    this.history = new Map();
    /** client_id → its availability row. */
    this.availability = new Map();
    /** Whether the server has the history routes (null: not asked yet). */
    this.historyServed = null;
    /** The clients the timelines were last drawn for. */
    this.timelineNames = null;
    this.control = new AbortController();
    this.timers = [];
    this.debounced = new Map();
    /** client_id → {text, kind, until}: the outcome of its last kick, shown for a while. */
    this.flashes = new Map();
  }

  /** Shows `clients` (the sign-in's answer) and starts following. */
  start(clients) {
    this.takeClients(clients);
    this.every(AGO_REFRESH_MS, () => this.renderClients());
    this.every(CONNECTIONS_REFRESH_MS, () => this.refreshConnections());
    this.every(SESSIONS_REFRESH_MS, () => this.refreshSessions());
    this.every(HISTORY_REFRESH_MS, () => this.refreshHistory());
    this.refreshConnections();
    this.refreshSessions();
    this.refreshHistory();
    this.follow();
  }

  /** Stops every request and timer. */
  stop() {
    this.control.abort();
    for (const timer of this.timers) clearInterval(timer);
    for (const timer of this.debounced.values()) clearTimeout(timer);
    this.timers = [];
    this.debounced.clear();
  }

  /** Runs `run` every `ms` until `stop()`. */
  every(ms, run) {
    this.timers.push(setInterval(run, ms));
  }

  /** Runs `run` once, `ms` after the last call with this `key`. */
  soon(key, ms, run) {
    clearTimeout(this.debounced.get(key));
    this.debounced.set(
      key,
      setTimeout(() => {
        this.debounced.delete(key);
        run();
      }, ms),
    );
  }

  /** A GET of the account's `path`; a refused credential signs out, other errors resolve null. */
  async read(path, query, onError) {
    try {
      return await this.api.get(`${this.base}/${path}`, query, { signal: this.control.signal });
    } catch (error) {
      if (this.control.signal.aborted) return null;
      if (credentialRefused(error)) {
        this.onRefused(await explain(error, this.api, this.account));
      } else if (onError) {
        onError(error);
      } else {
        notice(await explain(error, this.api, this.account), "error");
      }
      return null;
    }
  }

  // ---- the live path ----

  /**
   * Follows the account's event stream. On its first `live` the client list is read again
   * (what changed between the sign-in's read and the stream's start); from then on events keep
   * everything current. A server without the stream (404, 405) is polled instead.
   */
  async follow() {
    let caughtUp = false;
    try {
      await this.api.follow(`${this.base}/events/stream`, {
        signal: this.control.signal,
        onEvent: (event) => this.onEvent(event),
        onState: (state, detail) => {
          streamState(state, detail);
          if (state === "live" && !caughtUp) {
            caughtUp = true;
            this.refreshClients();
          }
        },
        onError: (error) => console.warn("cradle dashboard:", error.message),
      });
    } catch (error) {
      if (this.control.signal.aborted) return;
      if (credentialRefused(error)) {
        this.onRefused(await explain(error, this.api, this.account));
        return;
      }
      const why = `${error.status || ""} ${error.code || error.message}`.trim();
      streamState("polling", { why });
      notice(`No live event stream on this server (${why}): polling every ${POLL_MS / 1000} s instead.`);
      this.every(POLL_MS, () => {
        this.refreshClients();
        this.refreshConnections();
        this.refreshSessions();
      });
    }
  }

  /** One event of the stream: the list, the client it is about, and what it changes. */
  onEvent(event) {
    this.addEvent(event);
    const data = event.data || {};
    const client = data.client_id || clientOfStream(event.stream);
    if (!client && event.type.startsWith("connection.")) return;
    switch (event.type) {
      case "connection.connected":
        this.knownAs(data.connection_id, data.observed === true ? { observed: true } : { reported: true });
        this.clients.set(client, {
          ...this.clients.get(client),
          client_id: client,
          connected: true,
          connection_id: data.connection_id,
          since_millis: data.at_millis,
          connected_at_millis: data.at_millis,
        });
        break;
      case "connection.reported":
        this.knownAs(data.connection_id, { reported: true });
        break;
      case "connection.disconnected": {
        const row = this.clients.get(client);
        // A late end of an older connection leaves the current one as it is.
        if (row && row.connected && row.connection_id !== data.connection_id) break;
        this.clients.set(client, {
          ...row,
          client_id: client,
          connected: false,
          connection_id: data.connection_id,
          since_millis: data.at_millis,
          disconnected_at_millis: data.at_millis,
          last_disconnect_reason: data.reason ?? null,
        });
        break;
      }
      case "session.started":
      case "session.ended":
        this.soon("sessions", 300, () => this.refreshSessions());
        return;
      default:
        return;
    }
    this.renderClients();
    this.soon("connections", 500, () => this.refreshConnections());
    if (client) this.soon(`history:${client}`, 1500, () => this.refreshHistory([client]));
  }

  /** Records what is known of how `connectionId` came to be. */
  knownAs(connectionId, facts) {
    if (typeof connectionId !== "string") return;
    this.provenance.set(connectionId, { observed: false, reported: false, ...this.provenance.get(connectionId), ...facts });
  }

  // ---- the lists ----

  /** Takes the answer of `GET …/clients` as the clients' state. */
  takeClients(answer) {
    if (!answer || !Array.isArray(answer.clients)) return;
    this.clients = new Map(answer.clients.map((c) => [c.client_id, c]));
    this.renderClients();
  }

  /** Reads the clients again. */
  async refreshClients() {
    this.takeClients(await this.read("clients"));
  }

  /** Reads who is connected now (every page, up to `MAX_CONNECTION_PAGES`). */
  async refreshConnections() {
    const rows = [];
    let after = null;
    let unanswered = [];
    for (let page = 0; page < MAX_CONNECTION_PAGES; page += 1) {
      const answer = await this.read("connections", { after });
      if (!answer) return;
      rows.push(...answer.connections);
      unanswered = answer.unanswered_replicas || [];
      after = answer.next_after;
      if (!after) break;
    }
    rows.sort((a, b) => a.client_id.localeCompare(b.client_id) || a.connected_at_millis - b.connected_at_millis);
    fillTable(
      "connections",
      rows.map((c) =>
        el(
          "tr",
          { "data-client": c.client_id, "data-protocol": c.protocol },
          el("td", {}, c.client_id),
          el("td", { title: `${c.kind} on ${c.listener}` }, c.kind === "websocket" ? "WebSocket" : `MQTT ${c.protocol}`),
          el("td", { class: "id" }, c.peer || "—"),
          el("td", {}, ago(c.connected_at_millis)),
          el("td", { class: "id", title: c.replica ? `replica ${c.replica}` : null }, c.connection_id || "—"),
        ),
      ),
    );
    const note = $("#connections-note");
    note.hidden = unanswered.length === 0;
    note.textContent = `Replicas that did not answer (their connections are missing): ${unanswered.join(", ")}`;
  }

  /** Reads the active sessions (`GET …/baby-stations`). */
  async refreshSessions() {
    const answer = await this.read("baby-stations");
    if (!answer) return;
    fillTable(
      "sessions",
      answer.baby_stations.map((s) =>
        el(
          "tr",
          { "data-session": s.session_id },
          el("td", {}, s.name || s.session_id, el("span", { class: "id" }, ` ${s.session_id}`)),
          el("td", {}, s.client_id),
          el("td", {}, ago(s.started_at_millis)),
          el("td", {}, s.connected ? "connected" : "not connected"),
        ),
      ),
    );
  }

  /**
   * Reads the last 24 hours of `clients` (default: every client): their availability, then
   * each one's connections. A server without these routes gets a note instead of timelines.
   */
  async refreshHistory(clients = [...this.clients.keys()]) {
    if (this.historyServed === false || clients.length === 0) return;
    const to = Date.now();
    const range = { from: to - DAY_MS, to };
    const missing = (error) => {
      if (error.status === 404 && error.code === "not_found") this.historyServed = false;
      else notice(`History: ${error.status} ${error.code || ""} ${error.message}`, "error");
    };
    const availability = await this.read("availability", range, missing);
    if (this.historyServed === false) {
      this.renderTimelines();
      return;
    }
    this.historyServed = true;
    for (const row of availability ? availability.clients : []) this.availability.set(row.client_id, row);
    for (const client of clients) {
      const answer = await this.read(`clients/${encodeURIComponent(client)}/history`, range, missing);
      if (!answer) continue;
      this.history.set(client, answer);
      for (const c of answer.connections) this.knownAs(c.connection_id, { observed: c.observed, reported: c.reported });
    }
    this.renderClients();
    this.renderTimelines();
  }

  // ---- rendering ----

  /** The clients table; the timelines too when a client appeared. */
  renderClients() {
    const rows = [...this.clients.values()].sort((a, b) => a.client_id.localeCompare(b.client_id));
    fillTable("clients", rows.map((c) => this.clientRow(c)));
    const names = rows.map((c) => c.client_id).join("\n");
    if (names !== this.timelineNames) this.renderTimelines();
  }

  /** One client's row: state, since when, its last end, how its connection is known, kick. */
  clientRow(c) {
    const provenance = provenanceOf(this.provenance.get(c.connection_id));
    const state = c.connected ? "online" : "offline";
    const ended = c.last_disconnect_reason
      ? el(
          "span",
          {},
          el("span", { class: "reason", "data-reason": c.last_disconnect_reason }, c.last_disconnect_reason),
          " ",
          ago(c.disconnected_at_millis),
        )
      : "—";
    const kick = el("button", { type: "button", class: "danger", disabled: !c.connected, title: "End its live connections (administrators only)" }, "Disconnect");
    kick.addEventListener("click", () => this.kick(c.client_id));
    const flash = this.flashes.get(c.client_id);
    const outcome = flash && flash.until > Date.now() ? el("span", { class: "flash", "data-kind": flash.kind }, flash.text) : null;
    return el(
      "tr",
      { "data-client": c.client_id, "data-state": state, "data-provenance": provenance },
      el("td", {}, el("strong", {}, c.client_id)),
      el("td", { class: "status" }, state),
      el("td", { class: "since" }, ago(c.since_millis)),
      el("td", { class: "ended" }, ended),
      el(
        "td",
        {},
        el("span", { class: "badge", "data-provenance": provenance, title: PROVENANCE_TITLE[provenance] }, PROVENANCE_TEXT[provenance]),
        el("span", { class: "id" }, ` ${c.connection_id || ""}`),
      ),
      el("td", { class: "actions" }, kick, outcome),
    );
  }

  /** The availability panel: a bar per client, or a note when the server has no history. */
  renderTimelines() {
    const note = $("#timeline-note");
    if (this.historyServed === false) {
      note.hidden = false;
      note.textContent = "Not available: this server has no history routes (GET …/clients/{client_id}/history, …/availability).";
      $("#timelines").replaceChildren();
      return;
    }
    note.hidden = true;
    const clients = [...this.clients.keys()].sort();
    this.timelineNames = clients.join("\n");
    const rows = clients.map((client) => {
      const history = this.history.get(client);
      const figures = this.availability.get(client);
      const figure = figures
        ? `${figures.online_percent.toFixed(1)} % · ${figures.flaps} flap${figures.flaps === 1 ? "" : "s"}`
        : "";
      return el(
        "div",
        { class: "timeline-row", "data-client": client },
        el("span", { class: "name", title: client }, client),
        history ? timeline(history) : el("span", { class: "hint" }, "loading…"),
        el("span", { class: "figure", title: figures ? `${figures.connections} connections` : null }, figure),
      );
    });
    $("#timelines").replaceChildren(...rows);
  }

  /**
   * The administrator's kick: `POST …/clients/{c}/disconnect`. Its outcome shows beside the
   * button; a 403 (an account's token or an operator secret) says an admin token is needed.
   */
  async kick(client) {
    const say = (text, kind) => {
      this.flashes.set(client, { text, kind, until: Date.now() + FLASH_MS });
      this.renderClients();
    };
    try {
      const answer = await this.api.post(`${this.base}/clients/${encodeURIComponent(client)}/disconnect`);
      const ended = answer && answer.ended ? answer.ended.mqtt_connections + answer.ended.websocket_sessions : 0;
      say(`disconnected: ${ended} connection${ended === 1 ? "" : "s"} ended on this replica`, "ok");
    } catch (error) {
      if (error.status === 403) say("needs an admin token (403: this token may not disconnect clients)", "error");
      else if (error.status === 404 && error.code === "not_found") say("not served here: use the admin listener (404)", "error");
      else say(await explain(error, this.api, this.account), "error");
    }
  }

  /** Adds `event` on top of the list. */
  addEvent(event) {
    const list = $("#events");
    const data = event.data || {};
    list.prepend(
      el(
        "li",
        { class: "new", "data-type": event.type, "data-position": event.position },
        el("time", { title: stamp(event.at_millis) }, clock(event.at_millis)),
        el("span", { class: "type" }, event.type),
        el("span", { class: "client" }, data.client_id || clientOfStream(event.stream) || ""),
        el("span", { class: "detail" }, describe(event)),
      ),
    );
    while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
    $('[data-empty-for="events"]').hidden = true;
  }
}

/** The client of a connection stream `connection/{account}/{client}`. */
function clientOfStream(stream) {
  const parts = typeof stream === "string" ? stream.split("/") : [];
  return parts[0] === "connection" && parts.length === 3 ? parts[2] : null;
}

/** An event in words. */
function describe(event) {
  const d = event.data || {};
  switch (event.type) {
    case "connection.connected":
      return `connected ${d.observed ? "(observed by the broker)" : "(reported by the device)"} · ${d.connection_id}`;
    case "connection.reported":
      return `the device reported its connection · ${d.connection_id}`;
    case "connection.disconnected":
      return `disconnected: ${d.reason} · ${d.connection_id}`;
    case "session.started":
      return `session ${d.session_id} "${d.name || ""}" started`;
    case "session.ended":
      return `session ${d.session_id} ended: ${d.reason} after ${span(d.duration_millis || 0)}`;
    default: {
      const text = JSON.stringify(d);
      return text.length > 160 ? `${text.slice(0, 157)}…` : text;
    }
  }
}

/** One client's last 24 hours: a bar per connection over an offline background. */
function timeline(history) {
  const width = 1000;
  const height = 20;
  const from = history.from;
  const to = history.to;
  const x = (t) => ((Math.min(Math.max(t, from), to) - from) / (to - from)) * width;
  const bar = svg("svg", {
    class: "timeline",
    viewBox: `0 0 ${width} ${height}`,
    preserveAspectRatio: "none",
    role: "img",
    "aria-label": `${history.client_id}: ${history.connections.length} connections in the last 24 hours`,
  });
  bar.append(svg("rect", { class: "off", x: 0, y: 0, width, height }));
  if (history.history_from_millis != null && history.history_from_millis > from) {
    bar.append(
      svg(
        "rect",
        { class: "unknown", x: 0, y: 0, width: x(history.history_from_millis), height },
        svg("title", {}, `no history before ${stamp(history.history_from_millis)}`),
      ),
    );
  }
  for (const c of history.connections) {
    const start = c.started_at_millis ?? from;
    const end = c.open ? to : c.ended_at_millis ?? to;
    if (end <= from || start >= to) continue;
    const how = c.reported ? "reported by the device" : "only observed by the broker";
    const until = c.open ? "now" : `${stamp(end)}${c.end_reason ? ` (${c.end_reason})` : ""}`;
    bar.append(
      svg(
        "rect",
        { class: c.reported ? "on" : "observed", x: Math.min(x(start), width - 2), y: 0, width: Math.max(2, x(end) - x(start)), height },
        svg("title", {}, `${stamp(start)} – ${until}, ${how} · ${c.connection_id}`),
      ),
    );
  }
  for (let i = 1; i < 4; i += 1) {
    bar.append(svg("line", { class: "tick", x1: (width * i) / 4, x2: (width * i) / 4, y1: 0, y2: height }));
  }
  return bar;
}

// ---- page state ----

let board = null;

/** Shows a message above the board (`kind`: info, error, ok); empty hides it. */
function notice(text, kind = "info") {
  const p = $("#notice");
  p.hidden = !text;
  p.textContent = text || "";
  p.dataset.kind = kind;
}

/** The stream indicator in the header. */
function streamState(state, detail = {}) {
  const pill = $("#stream-state");
  pill.hidden = false;
  pill.dataset.state = state;
  pill.textContent = {
    connecting: "connecting…",
    open: "catching up…",
    live: "live",
    reconnecting: `reconnecting (${detail.reason}) in ${(detail.delayMs / 1000).toFixed(1)} s`,
    closed: "stopped",
    polling: `polling every ${POLL_MS / 1000} s`,
  }[state] || state;
  pill.title = state === "polling" ? `no live event stream: ${detail.why}` : detail.message || "";
}

/** The HTTP base of the Cradle serving this page: the folder above `/dashboard/`. */
function defaultServer() {
  return new URL("..", location.href).href;
}

/**
 * Signs in: reads the account's clients with the credential; on success shows the board and
 * keeps the credential in this tab's session storage, else shows why.
 * @param {{account: string, token: string, server: string}} credentials
 */
async function signIn({ account, token, server }) {
  const error = $("#sign-in-error");
  error.textContent = "";
  if (!ID.test(account)) {
    error.textContent = "The account id is 1-128 of A-Z a-z 0-9 - _ . : @";
    return;
  }
  let api;
  try {
    api = new CradleApi({ baseUrl: server || defaultServer(), token: token || undefined });
  } catch (e) {
    error.textContent = `The server URL is not valid: ${e.message}`;
    return;
  }
  const button = $("#sign-in-form button[type=submit]");
  button.disabled = true;
  try {
    const clients = await api.get(`/v1/accounts/${encodeURIComponent(account)}/clients`);
    sessionStorage.setItem(STORAGE_KEY, JSON.stringify({ account, token, server }));
    show(api, account, clients);
  } catch (e) {
    error.textContent = await explain(e, api, account);
  } finally {
    button.disabled = false;
  }
}

/** Replaces the sign-in form by the board of `account`. */
function show(api, account, clients) {
  $("#sign-in").hidden = true;
  $("#board").hidden = false;
  $("#sign-out").hidden = false;
  $("#who").textContent = `account ${account} · ${api.baseUrl}`;
  notice("");
  $("#events").replaceChildren();
  $('[data-empty-for="events"]').hidden = false;
  board = new Board(api, account, (message) => signOut(message));
  board.start(clients);
}

/** Back to the sign-in form (with `message` when the credential was refused). */
function signOut(message) {
  if (board) board.stop();
  board = null;
  sessionStorage.removeItem(STORAGE_KEY);
  $("#board").hidden = true;
  $("#sign-out").hidden = true;
  $("#stream-state").hidden = true;
  $("#who").textContent = "";
  $("#sign-in").hidden = false;
  $("#sign-in-error").textContent = message || "";
}

/** Wires the sign-in form, and signs in again with what this tab kept. */
function main() {
  const form = $("#sign-in-form");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const data = new FormData(form);
    signIn({
      account: String(data.get("account") || "").trim(),
      token: String(data.get("token") || "").trim(),
      server: String(data.get("server") || "").trim(),
    });
  });
  $("#sign-out").addEventListener("click", () => signOut(""));
  let saved = null;
  try {
    saved = JSON.parse(sessionStorage.getItem(STORAGE_KEY) || "null");
  } catch (_) {
    sessionStorage.removeItem(STORAGE_KEY);
  }
  if (saved && typeof saved.account === "string") {
    form.elements.account.value = saved.account;
    form.elements.server.value = saved.server || "";
    signIn(saved);
  }
  document.body.dataset.ready = "true";
}

main();
