// The browser tests' harness (tests/browser.rs): drives clients/js/cradle.js (served as
// /cradle.js), its CradleClient and its CradleApi, and records everything they emit, as plain JSON the Rust test reads back through
// DevTools (Runtime.evaluate with returnByValue). Every async helper resolves, never rejects:
// a failure is a value `{ ok: false, error, status, code }` the test can assert on and print.
import * as cradle from "/cradle.js";

/** `promise`, or a rejection after `ms` milliseconds. */
function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing after ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** An Error (the library's CradleError carries .status and .code, some .attempts) as JSON. */
function failure(e) {
  return {
    ok: false,
    error: String((e && e.message) || e),
    status: e && e.status !== undefined ? e.status : null,
    code: e && e.code !== undefined ? e.code : null,
    attempts: e && e.attempts !== undefined ? e.attempts : null,
    name: e && e.name !== undefined ? e.name : null,
  };
}

/** Events of the library, recorded in order. */
const EVENTS = ["hello", "resumed", "signal", "presence", "baby_stations", "error", "gone",
  "replaced", "state", "close"];

/**
 * The browser's WebSocket, recording what each socket the library opens reports: `h.sockets`
 * holds `{url, protocol, opened, close}` per socket, where `close` is the browser's own close
 * event (the library may report a close of its own making before it, e.g. for `close()`).
 */
class RecordingWebSocket extends WebSocket {
  constructor(url, protocols) {
    super(url, protocols);
    const record = { url: String(url), protocol: null, opened: false, close: null };
    h.sockets.push(record);
    this.addEventListener("open", () => {
      record.opened = true;
      record.protocol = this.protocol;
    });
    this.addEventListener("close", (event) => {
      record.close = { code: event.code, reason: event.reason, wasClean: event.wasClean };
    });
  }
}

const h = {
  /** The CradleClient under test (one a page). */
  client: null,
  /** Every socket the client opened, as the browser saw it (see RecordingWebSocket). */
  sockets: [],
  /** Each event type's payloads, in arrival order; `all` has every event as [type, payload]. */
  log: null,

  /** Creates the client with `opts` (the library's options; its sockets are recorded) and
   *  records its events. */
  open(opts) {
    h.log = { all: [] };
    for (const type of EVENTS) h.log[type] = [];
    h.sockets = [];
    h.client = new cradle.CradleClient({ WebSocket: RecordingWebSocket, ...opts });
    for (const type of EVENTS) {
      h.client.on(type, (payload) => {
        const copy = payload === undefined ? null : JSON.parse(JSON.stringify(payload));
        h.log[type].push(copy);
        h.log.all.push([type, copy]);
      });
    }
    return true;
  },

  /** `client.connect()`: `{ ok: true, hello }`, or a failure (also after `ms` without an answer). */
  async connect(ms = 10000) {
    try {
      return { ok: true, hello: await withTimeout(h.client.connect(), ms, "connect") };
    } catch (e) {
      return failure(e);
    }
  },

  /** `client.signal(...)`: true when written, false when queued. */
  signal(to, data, options) {
    return h.client.signal(to, data, options);
  },

  /** `client[method](...args)` (startSession, endSession): `{ ok: true, value }` or a failure. */
  async call(method, ...args) {
    try {
      return { ok: true, value: await withTimeout(h.client[method](...args), 10000, method) };
    } catch (e) {
      return failure(e);
    }
  },

  /** `client.close()`. */
  close() {
    h.client.close();
    return true;
  },

  /** The client's state and what it received, summed up. */
  snapshot() {
    const c = h.client;
    return {
      state: c.state,
      connectionId: c.connectionId,
      lastSeq: c.lastSeq,
      // Counted here from the events: hellos of new sessions, and resumes.
      freshCount: h.log.hello.filter((f) => f.resumed !== true).length,
      resumeCount: h.log.resumed.length,
      // The library's own counters (its freshCount counts new sessions after the first).
      libFreshCount: c.freshCount === undefined ? null : c.freshCount,
      libResumeCount: c.resumeCount === undefined ? null : c.resumeCount,
      signalData: h.log.signal.map((f) => f.data),
      gone: h.log.gone,
      closes: h.log.close,
      errors: h.log.error,
      sockets: h.sockets,
    };
  },

  /** A `fetch` from this page's origin: `{ ok: true, status, body }`, or `{ ok: false, error }`
   *  when the browser refused it (network error, or CORS). */
  async fetchJson(url, init = {}) {
    try {
      const response = await withTimeout(fetch(url, init), 10000, "fetch");
      let body = null;
      try {
        body = await response.json();
      } catch (_) {
        // not JSON: null
      }
      return { ok: true, status: response.status, body };
    } catch (e) {
      return { ok: false, error: String(e) };
    }
  },

  /** Plain WebSockets (no library), by index: their records, and the sockets themselves. */
  raw: [],
  rawSockets: [],

  /** Opens a plain WebSocket to `url` (with `protocols`) and returns its index. */
  rawOpen(url, protocols) {
    const record = { opened: false, messages: [], errors: 0, close: null };
    const ws = protocols ? new WebSocket(url, protocols) : new WebSocket(url);
    ws.onopen = () => { record.opened = true; };
    ws.onmessage = (event) => { record.messages.push(String(event.data)); };
    ws.onerror = () => { record.errors += 1; };
    ws.onclose = (event) => {
      record.close = { code: event.code, reason: event.reason, wasClean: event.wasClean };
    };
    h.raw.push(record);
    h.rawSockets.push(ws);
    return h.raw.length - 1;
  },

  /** Sends `text` on plain socket `i`. */
  rawSend(i, text) {
    h.rawSockets[i].send(text);
    return true;
  },

  /** The CradleApi under test (`apiOpen`). */
  api: null,
  /** What the running `follow` delivered: `events`, `states` ([state, detail]), `errors`, and
   *  its `outcome` once it ended (`{ok: true}`, or a failure). */
  followed: null,
  /** Stops the running `follow`. */
  followControl: null,

  /** Creates the CradleApi with `opts` (the library's). */
  apiOpen(opts) {
    h.api = new cradle.CradleApi(opts);
    return true;
  },

  /** `api[method](...args)` (get, post, put, delete): `{ ok: true, value }` or a failure. */
  async apiCall(method, ...args) {
    try {
      return { ok: true, value: await withTimeout(h.api[method](...args), 10000, method) };
    } catch (e) {
      return failure(e);
    }
  },

  /** Starts `api.follow(path, options)`, recording into `h.followed`. */
  follow(path, options = {}) {
    const f = { events: [], states: [], errors: [], outcome: null };
    const control = new AbortController();
    h.followed = f;
    h.followControl = control;
    h.api
      .follow(path, {
        ...options,
        signal: control.signal,
        onEvent: (event) => f.events.push(event),
        onState: (state, detail) => {
          const { error, ...rest } = detail;
          f.states.push([state, error ? { ...rest, error: failure(error) } : rest]);
        },
        onError: (e) => f.errors.push(failure(e)),
      })
      .then(
        () => (f.outcome = { ok: true }),
        (e) => (f.outcome = failure(e)),
      );
    return true;
  },

  /** Aborts the running `follow`. */
  unfollow() {
    h.followControl.abort();
    return true;
  },
};

window.h = h;
window.harnessReady = true;
