// cradle.js: the browser client of Cradle (its reference: clients/js/README.md; the protocol:
// docs/websocket.md). One dependency-free ES module (ES2020), imported as is:
//
//   import { CradleClient, CradleApi, CradleError, CLOSE } from "./cradle.js";
//
// `CradleClient` keeps one session of the WebSocket bridge alive: it tracks `seq` and drops
// duplicates, answers the server's heartbeats, notices a silent socket, resumes a dropped
// session with backoff, opens a fresh session when the old one is gone (and says so), queues
// signals while reconnecting, tells the app when its handshakes keep failing for a reason the
// browser hides (a refused origin, an unreachable server) and stops after a bounded number of
// them, and starts and ends monitoring sessions over HTTP (PUT / DELETE /sessions/{session_id}).
//
// `CradleApi` is the one way this library (and Cradle's dashboard) talks to the HTTP API:
// JSON requests with the bearer token, Cradle's JSON errors as `CradleError`s, and `follow()`,
// a reader of the live event stream (Server-Sent Events over `fetch`, so it can send the
// token as a header) that resumes after a drop from the last event it saw.

/**
 * The close codes of the bridge (docs/websocket.md, "Close codes"). The library itself closes a
 * silent socket with 4000 (not a server code).
 * @readonly
 * @enum {number}
 */
export const CLOSE = Object.freeze({
  NORMAL: 1000,
  TOO_BIG: 1009,
  SERVICE_RESTART: 1012,
  POLICY: 4008,
  REVOKED: 4010,
  ADMIN_DISCONNECT: 4011,
  SESSION_EXPIRED: 4100,
  RESUME_TOO_OLD: 4101,
  SLOW_CONSUMER: 4102,
  HEARTBEAT_TIMEOUT: 4103,
  REPLACED: 4104,
});

/** The code the library closes a silent socket with. */
const LIVENESS_CLOSE = 4000;

/** Close codes after which the session cannot be resumed: `gone` with this reason. */
const GONE_AFTER_CLOSE = Object.freeze({
  [CLOSE.POLICY]: "policy",
  [CLOSE.SESSION_EXPIRED]: "session_expired",
  [CLOSE.RESUME_TOO_OLD]: "resume_too_old",
  [CLOSE.SLOW_CONSUMER]: "slow_consumer",
  [CLOSE.REVOKED]: "revoked",
  [CLOSE.ADMIN_DISCONNECT]: "admin_disconnect",
});

/** HTTP statuses of a refused upgrade that retrying cannot fix (with Cradle's JSON error body). */
const FATAL_STATUSES = [400, 401, 403];

/** HTTP statuses of the event stream that following again cannot fix. */
const FOLLOW_FATAL_STATUSES = [400, 401, 403, 404, 405, 410];

/** A valid id: 1-128 characters of `A-Z a-z 0-9 - _ . : @` (topics.md). */
const ID = /^[A-Za-z0-9_.:@-]{1,128}$/;

/** WebSocket.readyState OPEN (a fake WebSocket class need not define the constant). */
const OPEN = 1;

/**
 * Every error this library rejects with, throws for a refused request, or stops with. `code`
 * is stable, branch on it: the answer's `error.code` (`unauthorized`, `forbidden`,
 * `session_not_found`, …) or one of the library's own (`network_error`, `timeout`, `aborted`,
 * `refused`, `unreachable`, `connect_failed`, `replaced`, `closed`, …). `message` is for
 * people: the server's `error.message` when it sent one.
 */
export class CradleError extends Error {
  /**
   * @param {string} message
   * @param {object} [details]  copied onto the error; the defaults below when absent
   * @param {?string} [details.code]  the error code (null: the answer had none)
   * @param {number} [details.status]  the HTTP status; 0 when no answer was read
   * @param {?string} [details.field]  the answer's `error.field`: the parameter at fault
   * @param {*} [details.body]  the answer's body (JSON when it was), or null
   * @param {number} [details.retryAfterMs]  the answer's `Retry-After`, in ms (0: none)
   */
  constructor(message, details = {}) {
    super(message);
    this.name = "CradleError";
    Object.assign(this, { code: null, status: 0, field: null, body: null, retryAfterMs: 0 }, details);
  }
}

/**
 * Backoff settings: the delay before the n-th consecutive retry (from 0) is
 * `random(1 - jitter .. 1) × min(maxMs, initialMs × factor^n)`.
 * @typedef {{initialMs?: number, maxMs?: number, factor?: number, jitter?: number}} Backoff
 */

/**
 * Options of `CradleApi`.
 * @typedef {object} CradleApiOptions
 * @property {string} [baseUrl]  Cradle's HTTP base URL (`http:`/`https:`; `ws:`/`wss:`
 *   accepted), with an optional path prefix under which every path is resolved. Default: the
 *   page's origin.
 * @property {string} [token]  A bearer token (an account's token, an operator secret, an
 *   administrator credential or the admin token), sent as `Authorization: Bearer`.
 * @property {string} [account]  Sent as `X-Cradle-Account` whenever set (open mode, admin
 *   token: the account of the session routes).
 * @property {number} [timeoutMs]  Longest request, answer and body, in ms (default 15000; 0:
 *   none). The event stream has its own idle timeout instead.
 * @property {typeof fetch} [fetch]  The fetch function (default `globalThis.fetch`).
 */

/**
 * Options of `CradleApi.follow`.
 * @typedef {object} FollowOptions
 * @property {(event: object) => void} onEvent  Each log event, parsed: `{account_id, position,
 *   stream, stream_version, type, event_version, at_millis, recorded_at_millis, data}`, once,
 *   in log order, across reconnects.
 * @property {(state: string, detail: object) => void} [onState]  `connecting` `{after}`, `open`
 *   `{after}` (the stream answered; the backlog follows), `live` `{position, after}` (the
 *   backlog is sent: what follows happens now), `reconnecting` `{reason, message, error,
 *   delayMs, after}` (dropped: `lagged`, `shutdown`, `ended`, `idle`, `network_error`, an HTTP
 *   error's code), `closed` `{reason: "aborted"}` or `{error}` (a refusal; `follow` rejects).
 * @property {(error: CradleError) => void} [onError]  An event whose data is not a JSON
 *   object (code `invalid_event`; skipped).
 * @property {number|string} [after]  Start after this position; absent: only events from now on.
 * @property {object} [query]  More query parameters: `client_id`, `type` (comma list).
 * @property {AbortSignal} [signal]  Stops following: `follow` then resolves.
 * @property {Backoff} [backoff]  Reconnect delays; defaults 250, 10000, 2, 0.5. The count
 *   restarts at each `live`.
 * @property {number} [idleTimeoutMs]  A stream silent this long (no event, no keep-alive) is
 *   dropped and followed again (default 45000, three of Cradle's default heartbeats; 0: never).
 */

/**
 * Cradle's HTTP API: JSON requests with the bearer token, refusals as `CradleError`s, and the
 * live event stream. The one HTTP client of `CradleClient` and of Cradle's dashboard.
 */
export class CradleApi {
  /**
   * @param {CradleApiOptions} [options]
   */
  constructor(options) {
    const o = options || {};
    if (o.token != null && (typeof o.token !== "string" || o.token === "")) {
      throw new TypeError("CradleApi: token must be a non-empty string");
    }
    if (o.account != null && (typeof o.account !== "string" || !ID.test(o.account))) {
      throw new TypeError("CradleApi: account must be a valid id");
    }
    const base = o.baseUrl ?? globalThis.location?.origin;
    if (!base) throw new TypeError("CradleApi: baseUrl is required");
    /** Cradle's HTTP base URL, ending in `/`. @readonly @type {string} */
    this.baseUrl = endpoints(base).http;
    this._token = o.token ?? null;
    this._account = o.account ?? null;
    this._timeoutMs = nonNegative(o.timeoutMs, 15000);
    // Called unbound: a browser's fetch refuses any `this` but the window.
    this._fetch = o.fetch ?? ((input, init) => globalThis.fetch(input, init));
  }

  /**
   * The URL of `path` under `baseUrl` (a leading `/` is ignored, so a path prefix of `baseUrl`
   * is kept), with `query`'s entries (null and undefined values left out).
   * @param {string} path  e.g. `/v1/accounts/fam/clients`
   * @param {object|URLSearchParams} [query]
   * @returns {string}
   */
  url(path, query) {
    const u = new URL(`./${String(path).replace(/^\/+/, "")}`, this.baseUrl);
    const entries = query instanceof URLSearchParams ? query.entries() : Object.entries(query || {});
    for (const [key, value] of entries) {
      if (value != null) u.searchParams.set(key, String(value));
    }
    return u.href;
  }

  /**
   * `GET path?query`.
   * @param {string} path
   * @param {object|URLSearchParams} [query]
   * @param {{signal?: AbortSignal, timeoutMs?: number}} [options]
   * @returns {Promise<*>} the answer's JSON (null for an empty body)
   * @throws {CradleError} a refusal (`status`, `code`, `message`, `field`, `body`), or no answer
   *   (`status` 0, `code` `network_error`, `timeout` or `aborted`)
   */
  get(path, query, options) {
    return this.request("GET", path, { ...options, query });
  }

  /**
   * `POST path` with `body` as JSON (no body when undefined).
   * @param {string} path
   * @param {*} [body]
   * @param {{signal?: AbortSignal, timeoutMs?: number}} [options]
   * @returns {Promise<*>} the answer's JSON
   * @throws {CradleError} as `get`
   */
  post(path, body, options) {
    return this.request("POST", path, { ...options, body });
  }

  /**
   * `PUT path` with `body` as JSON.
   * @param {string} path
   * @param {*} [body]
   * @param {{signal?: AbortSignal, timeoutMs?: number}} [options]
   * @returns {Promise<*>} the answer's JSON
   * @throws {CradleError} as `get`
   */
  put(path, body, options) {
    return this.request("PUT", path, { ...options, body });
  }

  /**
   * `DELETE path`.
   * @param {string} path
   * @param {{signal?: AbortSignal, timeoutMs?: number}} [options]
   * @returns {Promise<*>} the answer's JSON
   * @throws {CradleError} as `get`
   */
  delete(path, options) {
    return this.request("DELETE", path, options);
  }

  /**
   * One request; resolves with the answer's JSON when its status is 2xx.
   * @param {string} method
   * @param {string} path
   * @param {{query?: object|URLSearchParams, body?: *, signal?: AbortSignal, timeoutMs?: number}} [options]
   * @returns {Promise<*>} the answer's JSON (its text when not JSON; null when empty)
   * @throws {CradleError} as `get`
   */
  async request(method, path, options) {
    const { res, text, json } = await this._exchange(method, path, options);
    if (!res.ok) throw refusal(method, path, res, text, json);
    return text === "" ? null : json ?? text;
  }

  /**
   * Whether anything answers HTTP at `baseUrl`: a `no-cors` `GET /healthz`, which a browser
   * lets through whatever the page's origin, but whose answer (status, body) it hides. True
   * means the server is reachable; a request of this page that fails at the same time was
   * refused by CORS (the page's origin is not in `http.allowed_origins`).
   * @param {{timeoutMs?: number}} [options]  default 5000
   * @returns {Promise<boolean>}
   */
  async reachable({ timeoutMs = 5000 } = {}) {
    try {
      await withDeadline(null, timeoutMs, (signal) =>
        this._fetch(this.url("healthz"), { method: "GET", mode: "no-cors", cache: "no-store", signal }),
      );
      return true;
    } catch (_) {
      return false;
    }
  }

  /**
   * Follows a live event stream (`GET /v1/accounts/{account_id}/events/stream`): each event
   * once, in order, to `onEvent`. After a drop (network, `event: cut`, a silent stream, a
   * `5xx`) it follows again with `after` = the last `id:` it saw (or the position of the last
   * `event: live`, when larger), after a backoff delay (at least `Retry-After`). The position goes in the query, not in `Last-Event-ID`: a header a
   * page of another origin may not send without Cradle's CORS allowing it.
   * @param {string} path
   * @param {FollowOptions} options
   * @returns {Promise<void>} resolves when `signal` aborts; rejects with the `CradleError` of
   *   an answer following again cannot fix (400, 401, 403, 404, 405, 410, or an answer that is
   *   no event stream, code `not_event_stream`)
   */
  async follow(path, options) {
    const o = options || {};
    if (typeof o.onEvent !== "function") throw new TypeError("CradleApi.follow: onEvent must be a function");
    const handlers = {
      onEvent: o.onEvent,
      onState: typeof o.onState === "function" ? o.onState : () => {},
      onError: typeof o.onError === "function" ? o.onError : () => {},
    };
    const signal = o.signal ?? null;
    const backoff = backoffOf(o.backoff);
    const idleTimeoutMs = nonNegative(o.idleTimeoutMs, 45000);
    const cursor = { lastId: o.after == null ? null : String(o.after), live: false };
    let failures = 0;
    while (!signal?.aborted) {
      let drop;
      try {
        drop = await this._followOnce(path, o.query, cursor, handlers, signal, idleTimeoutMs);
      } catch (e) {
        if (signal?.aborted) break;
        if (FOLLOW_FATAL_STATUSES.includes(e.status) || e.code === "not_event_stream") {
          call(handlers.onState, "closed", { error: e });
          throw e;
        }
        drop = { reason: e.code || "network_error", message: e.message, error: e };
      }
      if (signal?.aborted) break;
      if (cursor.live) {
        failures = 0;
        cursor.live = false;
      }
      const retryAfterMs = (drop.error && drop.error.retryAfterMs) || 0;
      const delayMs = Math.max(retryAfterMs, backoffDelay(backoff, failures));
      failures += 1;
      call(handlers.onState, "reconnecting", { ...drop, delayMs, after: cursor.lastId });
      await sleep(delayMs, signal);
    }
    call(handlers.onState, "closed", { reason: "aborted" });
  }

  /**
   * One stream, until it ends. Resolves with why it ended (`{reason, message}`: the `cut`'s
   * reason, `ended`, or `idle`); rejects with a `CradleError` for a refusal or a lost
   * connection.
   */
  async _followOnce(path, query, cursor, handlers, signal, idleTimeoutMs) {
    const q = { ...query };
    if (cursor.lastId !== null) q.after = cursor.lastId;
    const url = this.url(path, q);
    call(handlers.onState, "connecting", { after: cursor.lastId });
    const ctl = new AbortController();
    const abort = () => ctl.abort();
    signal?.addEventListener("abort", abort, { once: true });
    let idle = false;
    let timer = null;
    const arm = () => {
      clearTimeout(timer);
      if (idleTimeoutMs > 0) {
        timer = setTimeout(() => {
          idle = true;
          ctl.abort();
        }, idleTimeoutMs);
      }
    };
    let cut = null;
    const parser = new EventStreamParser(cursor.lastId, ({ type, data, lastEventId }) => {
      cursor.lastId = lastEventId;
      if (data === null) return;
      if (type === "message") {
        const event = parseJson(data);
        if (event !== null && typeof event === "object" && !Array.isArray(event)) {
          call(handlers.onEvent, event);
        } else {
          call(handlers.onError, new CradleError("an event whose data is not a JSON object", { code: "invalid_event", body: data }));
        }
      } else if (type === "live") {
        cursor.live = true;
        const live = parseJson(data);
        const position = live && typeof live.position === "number" ? live.position : null;
        // Everything up to `position` was sent or filtered out: a resume may start there, also
        // when no event came (a stream followed "from now on" would otherwise leave a gap).
        if (position !== null && (cursor.lastId === null || position > Number(cursor.lastId))) {
          cursor.lastId = String(position);
        }
        call(handlers.onState, "live", { position, after: cursor.lastId });
      } else if (type === "cut") {
        cut = parseJson(data) || {};
      }
    });
    try {
      arm();
      const res = await this._fetch(url, {
        method: "GET",
        headers: this._headers({ Accept: "text/event-stream" }),
        cache: "no-store",
        signal: ctl.signal,
      });
      if (!res.ok) {
        const text = await res.text().catch(() => "");
        throw refusal("GET", path, res, text, parseJson(text));
      }
      const type = (res.headers.get("Content-Type") || "").toLowerCase();
      if (!type.startsWith("text/event-stream") || !res.body) {
        throw new CradleError(`GET ${path}: not an event stream (${type || "no Content-Type"})`, {
          code: "not_event_stream",
          status: res.status,
        });
      }
      call(handlers.onState, "open", { after: cursor.lastId });
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        arm();
        parser.push(decoder.decode(value, { stream: true }));
      }
      return cut
        ? { reason: typeof cut.reason === "string" ? cut.reason : "cut", message: cut.message }
        : { reason: "ended", message: "the server ended the stream" };
    } catch (e) {
      if (idle) return { reason: "idle", message: `nothing for ${idleTimeoutMs} ms` };
      if (e instanceof CradleError) throw e;
      throw noAnswer("GET", path, e, "network_error");
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener("abort", abort);
      ctl.abort();
    }
  }

  /** Sends one request; resolves with the answer and its body, read within the timeout. */
  async _exchange(method, path, { query, body, signal, timeoutMs } = {}) {
    const url = this.url(path, query);
    const extra = body === undefined ? {} : { "Content-Type": "application/json" };
    const init = { method, headers: this._headers(extra), cache: "no-store" };
    if (body !== undefined) init.body = JSON.stringify(body);
    return withDeadline(signal, nonNegative(timeoutMs, this._timeoutMs), async (deadline, expired) => {
      try {
        const res = await this._fetch(url, { ...init, signal: deadline });
        const text = await res.text();
        return { res, text, json: parseJson(text) };
      } catch (e) {
        const code = expired() ? "timeout" : signal?.aborted ? "aborted" : "network_error";
        throw noAnswer(method, path, e, code);
      }
    });
  }

  /** The request headers: the credential, the account, and `extra`. */
  _headers(extra) {
    const headers = {};
    if (this._token) headers.Authorization = `Bearer ${this._token}`;
    if (this._account) headers["X-Cradle-Account"] = this._account;
    return Object.assign(headers, extra);
  }
}

/**
 * The Server-Sent Events parser of the HTML standard ("event stream interpretation"): text is
 * pushed in as it arrives, in chunks cut anywhere; at each blank line the callback gets
 * `{type, data, lastEventId}`, where `data` is null when the event had no `data:` line (an
 * `id:` alone still moves `lastEventId`). Comments (`: keep-alive`) and `retry:` are skipped.
 */
class EventStreamParser {
  /**
   * @param {?string} lastEventId  the last id of the stream followed before (kept across
   *   reconnects, as an EventSource keeps it)
   * @param {(event: {type: string, data: ?string, lastEventId: ?string}) => void} onEvent
   */
  constructor(lastEventId, onEvent) {
    this._onEvent = onEvent;
    this._buffer = "";
    this._data = [];
    this._type = "";
    this._lastEventId = lastEventId;
  }

  /** Parses `text`, keeping an unfinished line for the next chunk. */
  push(text) {
    this._buffer += text;
    let start = 0;
    for (;;) {
      const cr = this._buffer.indexOf("\r", start);
      const lf = this._buffer.indexOf("\n", start);
      const end = cr < 0 ? lf : lf < 0 ? cr : Math.min(cr, lf);
      if (end < 0) break;
      // A CR at the end of the chunk may be the first half of a CRLF: wait for the next.
      if (end === cr && end === this._buffer.length - 1) break;
      const line = this._buffer.slice(start, end);
      start = end + (end === cr && this._buffer[end + 1] === "\n" ? 2 : 1);
      this._line(line);
    }
    this._buffer = this._buffer.slice(start);
  }

  _line(line) {
    if (line === "") {
      const data = this._data.length > 0 ? this._data.join("\n") : null;
      const type = this._type || "message";
      this._data = [];
      this._type = "";
      this._onEvent({ type, data, lastEventId: this._lastEventId });
      return;
    }
    if (line[0] === ":") return;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value[0] === " ") value = value.slice(1);
    if (field === "event") this._type = value;
    else if (field === "data") this._data.push(value);
    else if (field === "id" && !value.includes("\0")) this._lastEventId = value;
  }
}

/**
 * Constructor options.
 * @typedef {object} CradleOptions
 * @property {string} clientId  The client id in the account (a valid id). Required.
 * @property {string} [url]  Cradle's HTTP base URL (`http:`/`https:`; `ws:`/`wss:` accepted), with
 *   an optional path prefix; `/ws` and `/sessions/...` are resolved under it. Default: the page's
 *   origin (`location.origin`).
 * @property {string} [token]  An account token (`cradle credentials issue --account A --token`).
 *   Offered on `/ws` as the subprotocol pair `["cradle", token]` (never in the query string), sent
 *   on HTTP as `Authorization: Bearer`.
 * @property {string} [account]  The account in open mode: `account=` on `/ws`,
 *   `X-Cradle-Account` on HTTP (sent whenever set).
 * @property {Backoff} [backoff]  Reconnect delays for the n-th consecutive failed attempt.
 *   Defaults 250, 10000, 2, 0.5 (`jitter: 1` is full jitter).
 * @property {boolean} [failFast]  Make `connect()` reject (and the client close) when its first
 *   attempt fails for any reason; by default only a fatal refusal (400/401/403) rejects, anything
 *   else is retried with backoff.
 * @property {number} [queueSize]  Signals kept while reconnecting (default 256); when full the
 *   oldest is dropped with an `error` event `{code: "queue_full"}`.
 * @property {number} [maxFrameBytes]  `signal()` throws a RangeError for a frame larger than this
 *   (UTF-8 bytes; default 65536, Cradle's default `websocket.max_frame_bytes`; 0: no check).
 * @property {number} [heartbeatSecs]  Heartbeat assumed until the first `hello` says (default 15).
 * @property {number} [diagnoseTimeoutMs]  Timeout of the diagnostic `GET /ws` and of the
 *   reachability probe (default 10000).
 * @property {number} [reportAfter]  Consecutive failed handshakes whose cause no readable
 *   answer gives (`refused`, `unreachable`) before the `error` event (default 3).
 * @property {number} [maxRefused]  Such handshakes after which the client stops when the last
 *   one was `refused` (default 8; 0: never).
 * @property {number} [maxUnreachable]  The same when the last one was `unreachable` (default 0:
 *   never, a network or server outage ends by itself; the `error` event still comes).
 * @property {typeof WebSocket} [WebSocket]  The WebSocket class (default `globalThis.WebSocket`).
 * @property {typeof fetch} [fetch]  The fetch function (default `globalThis.fetch`).
 */

/**
 * Events and the one argument their handlers get:
 * - `hello`: the hello frame (every hello, fresh or resumed);
 * - `resumed`: `{hello, replayed}` after a resume succeeded; `replayed` is the number of frames
 *   the socket delivered before its hello;
 * - `signal`, `presence`, `baby_stations`: the frame;
 * - `error`: an `error` frame of the server (it has `seq`), or a local error without `seq`:
 *   `{code, message, status?, dropped?, attempts?, final?}` (codes `queue_full`,
 *   `invalid_server_frame`, the fatal refusals of `/ws` with their HTTP `status`, and
 *   `refused` / `unreachable` with `attempts`, `final` when the client stopped);
 * - `gone`: `{reason, code}`: the session could not be resumed and frames were lost; a fresh
 *   session is being opened;
 * - `replaced`: `{code, reason}`: close 4104, another socket took the session; the client stops;
 * - `state`: the new state;
 * - `close`: `{code, reason, wasClean}` of each socket that ended.
 * @typedef {"hello"|"resumed"|"signal"|"presence"|"baby_stations"|"error"|"gone"|"replaced"|"state"|"close"} CradleEvent
 */

/**
 * A client of Cradle's WebSocket bridge: one session, kept alive across drops.
 */
export class CradleClient {
  /**
   * @param {CradleOptions} options
   */
  constructor(options) {
    const o = options || {};
    if (typeof o.clientId !== "string" || !ID.test(o.clientId)) {
      throw new TypeError("CradleClient: clientId must be a valid id (1-128 of A-Z a-z 0-9 - _ . : @)");
    }
    if (o.token != null && (typeof o.token !== "string" || o.token === "")) {
      throw new TypeError("CradleClient: token must be a non-empty string");
    }
    if (o.account != null && (typeof o.account !== "string" || !ID.test(o.account))) {
      throw new TypeError("CradleClient: account must be a valid id");
    }
    const base = o.url ?? globalThis.location?.origin;
    if (!base) throw new TypeError("CradleClient: url is required");
    const ends = endpoints(base);

    /** The client id. @readonly @type {string} */
    this.clientId = o.clientId;
    /** The account, from the last hello (null before). @readonly @type {?string} */
    this.accountId = null;
    /** The session's connection id, from its hello (null before, and after `gone`). @readonly @type {?string} */
    this.connectionId = null;
    /** The highest `seq` processed in the current session (0 before its hello). @readonly @type {number} */
    this.lastSeq = 0;
    /** "idle" | "connecting" | "open" | "reconnecting" | "closed". @readonly @type {string} */
    this.state = "idle";
    /**
     * Why the client stopped by itself (a fatal refusal, `refused`/`unreachable` after too many
     * attempts, `replaced`): the `CradleError` a pending `connect()` rejected with; null while
     * running and after `close()`. @readonly @type {?CradleError}
     */
    this.failure = null;
    /** Seconds between the server's heartbeats (from hello). @readonly @type {number} */
    this.heartbeatSecs = positive(o.heartbeatSecs, 15);
    /** Seconds a dropped session waits for a resume (from hello). @readonly @type {number} */
    this.resumeWindowSecs = 30;
    /** Successful resumes (hello with `resumed: true` on a resuming socket). @readonly @type {number} */
    this.resumeCount = 0;
    /** Fresh sessions opened after the client's first one (after `gone`, or `connect()` after closed). @readonly @type {number} */
    this.freshCount = 0;

    this._token = o.token ?? null;
    this._account = o.account ?? null;
    this._wsBase = ends.ws;
    this._api = new CradleApi({ baseUrl: ends.http, token: o.token, account: o.account, fetch: o.fetch });
    this._backoff = backoffOf(o.backoff);
    this._failFast = Boolean(o.failFast);
    this._queueSize = Math.max(1, Math.floor(positive(o.queueSize, 256)));
    this._maxFrameBytes = Math.max(0, finite(o.maxFrameBytes, 65536));
    this._diagnoseTimeoutMs = positive(o.diagnoseTimeoutMs, 10000);
    this._reportAfter = Math.max(1, Math.floor(positive(o.reportAfter, 3)));
    this._maxRefused = nonNegative(o.maxRefused, 8);
    this._maxUnreachable = nonNegative(o.maxUnreachable, 0);
    this._WebSocket = o.WebSocket ?? globalThis.WebSocket;
    if (typeof this._WebSocket !== "function") throw new TypeError("CradleClient: no WebSocket class");

    this._resumeSecret = null;
    this._handlers = new Map();
    this._queue = [];
    this._sock = null; // the current socket's record; every other socket is stale
    this._gen = 0; // bumped by every attempt and by a stop: late async results are dropped
    this._attempt = 0; // consecutive failed attempts: the backoff exponent
    this._unexplained = { count: 0, reason: null }; // consecutive handshakes failed for no readable reason
    this._droppedAt = null; // when the session's last attached socket ended
    this._everHello = false;
    this._connect = null; // {promise, resolve, reject, settled} of connect()
    this._retryTimer = null;
    this._liveTimer = null;
  }

  /**
   * Adds an event handler.
   * @param {CradleEvent} type
   * @param {(arg: any) => void} handler
   * @returns {() => void} a function that removes the handler
   */
  on(type, handler) {
    if (typeof handler !== "function") throw new TypeError("CradleClient.on: handler must be a function");
    let set = this._handlers.get(type);
    if (!set) this._handlers.set(type, (set = new Set()));
    set.add(handler);
    return () => this.off(type, handler);
  }

  /**
   * Removes an event handler.
   * @param {CradleEvent} type
   * @param {(arg: any) => void} handler
   */
  off(type, handler) {
    this._handlers.get(type)?.delete(handler);
  }

  /**
   * Connects and resolves with the first hello frame. Retries with backoff until then, unless
   * the refusal is fatal (400/401/403) or `failFast` is set. Called again while connecting or
   * connected, returns the same promise; called when closed, starts a fresh session.
   * @returns {Promise<object>} the hello frame
   */
  connect() {
    if (this.state === "closed") {
      this._forgetSession();
      this._connect = null;
    }
    if (this._connect) return this._connect.promise;
    const c = { settled: false };
    c.promise = new Promise((resolve, reject) => {
      c.resolve = resolve;
      c.reject = reject;
    });
    // Awaiting is optional: every failure is also an event (or the app's own close()).
    c.promise.catch(() => {});
    this._connect = c;
    this._attempt = 0;
    this._unexplained = { count: 0, reason: null };
    this.failure = null;
    this._setState("connecting");
    this._open();
    return c.promise;
  }

  /**
   * Sends a signal to another client of the account:
   * `{"type":"signal","to","data","to_connection"?}`. While the client is not open (connecting,
   * reconnecting, idle) the frame is queued and sent after the next hello.
   * @param {string} to  the target client id
   * @param {*} data  any JSON value (serialised now)
   * @param {{toConnection?: string}} [options]  the target's connection, when known
   * @returns {boolean} true if written to the socket, false if queued
   * @throws {Error} when the client is closed; TypeError for a bad argument; RangeError for a
   *   frame over `maxFrameBytes`
   */
  signal(to, data, { toConnection } = {}) {
    if (this.state === "closed") throw new Error("CradleClient.signal: the client is closed");
    if (typeof to !== "string" || !ID.test(to)) throw new TypeError("CradleClient.signal: `to` must be a valid id");
    if (toConnection != null && (typeof toConnection !== "string" || !ID.test(toConnection))) {
      throw new TypeError("CradleClient.signal: `toConnection` must be a valid id");
    }
    if (data === undefined) throw new TypeError("CradleClient.signal: `data` is required");
    const frame = { type: "signal", to, data };
    if (toConnection != null) frame.to_connection = toConnection;
    const text = JSON.stringify(frame);
    if (this._maxFrameBytes > 0 && utf8Length(text) > this._maxFrameBytes) {
      throw new RangeError(`CradleClient.signal: frame larger than ${this._maxFrameBytes} bytes`);
    }
    const sock = this._sock;
    if (this.state === "open" && sock && sock.ready && sock.ws.readyState === OPEN) {
      sock.ws.send(text);
      return true;
    }
    if (this._queue.length >= this._queueSize) {
      const dropped = this._queue.shift();
      this._emit("error", {
        code: "queue_full",
        message: `signal queue full (${this._queueSize}): the oldest signal was dropped`,
        dropped: dropped.frame,
      });
    }
    this._queue.push({ frame, text });
    return false;
  }

  /** Signals queued for the next hello. @type {number} */
  get queued() {
    return this._queue.length;
  }

  /**
   * Starts a monitoring session: `PUT /sessions/{sessionId}` with the body
   * `{session_id, connection_id, client_id?, name, started_at_millis}`.
   * @param {string} sessionId
   * @param {{connectionId?: string, clientId?: ?string, name: string, startedAtMillis?: number}} details
   *   `connectionId` defaults to this client's connection and then `clientId` to this client
   *   (pass `clientId: null` to omit it); `startedAtMillis` defaults to now.
   * @returns {Promise<object>} the answer, `{session_id, account_id, status}`
   * @throws {CradleError} with `.status` (0 when no answer) and `.code` (the answer's
   *   `error.code`, or `network_error` / `timeout` when no answer came)
   */
  async startSession(sessionId, { connectionId, clientId, name, startedAtMillis } = {}) {
    const connection = connectionId ?? this.connectionId;
    if (typeof connection !== "string") {
      throw new CradleError("startSession: no connectionId (and no session yet)", { code: "invalid_parameter" });
    }
    const client = clientId !== undefined ? clientId : connectionId === undefined ? this.clientId : null;
    const body = {
      session_id: sessionId,
      connection_id: connection,
      name,
      started_at_millis: startedAtMillis ?? Date.now(),
    };
    if (client != null) body.client_id = client;
    return this._api.put(sessionPath("startSession", sessionId), body);
  }

  /**
   * Ends a monitoring session: `DELETE /sessions/{sessionId}`.
   * @param {string} sessionId
   * @returns {Promise<object>} the answer, `{session_id, account_id, status}`
   * @throws {CradleError} with `.status` and `.code`, as `startSession`
   */
  async endSession(sessionId) {
    return this._api.delete(sessionPath("endSession", sessionId));
  }

  /**
   * Closes the socket with 1000 ("bye"), which ends the session on the server (`clean`); no
   * reconnect. Queued signals are dropped; a pending `connect()` rejects. State "closed".
   */
  close() {
    if (this.state === "closed") return;
    const sock = this._sock;
    this._stop(new CradleError("the client was closed", { code: "closed" }));
    if (sock) {
      // The `close` event is the browser's own, once Cradle answered (or the socket
      // failed): `wasClean` tells whether the close handshake completed.
      sock.ws.onclose = (ev) => {
        sock.ws.onclose = null;
        this._emit("close", { code: ev.code, reason: ev.reason, wasClean: ev.wasClean });
      };
      try {
        sock.ws.close(CLOSE.NORMAL, "bye");
      } catch (_) {
        // already closing
      }
    }
  }

  // ---- sockets ----

  /** Opens the next socket: a resume when the session is known, else a fresh session. */
  _open() {
    this._clearRetry();
    if (this.state === "closed") return;
    if (
      this.connectionId !== null &&
      this._droppedAt !== null &&
      Date.now() - this._droppedAt > this.resumeWindowSecs * 1000
    ) {
      this._gone("resume_window_passed", null);
      if (this.state === "closed") return;
    }
    this._gen += 1;
    const resume = this.connectionId !== null;
    if (!resume) this.lastSeq = 0;
    const query = this._query(resume);
    const protocols = this._token ? ["cradle", this._token] : ["cradle"];
    let ws;
    try {
      ws = new this._WebSocket(`${this._wsBase}?${query}`, protocols);
    } catch (e) {
      this._fatal(0, "socket_error", `cannot open a WebSocket to ${this._wsBase}: ${e && e.message}`);
      return;
    }
    const sock = { ws, query, resume, opened: false, ready: false, before: 0 };
    this._sock = sock;
    ws.onopen = () => {
      if (this._sock === sock) sock.opened = true;
    };
    ws.onmessage = (ev) => {
      if (this._sock === sock) this._onFrame(sock, ev.data);
    };
    ws.onerror = () => {}; // a close event follows
    ws.onclose = (ev) => {
      if (this._sock === sock) this._ended(sock, ev.code, ev.reason, ev.wasClean);
    };
    this._armLiveness(sock);
  }

  /** The query of `/ws` (URLSearchParams): the token is never in it. */
  _query(resume) {
    const q = new URLSearchParams();
    q.set("client_id", this.clientId);
    if (this._account) q.set("account", this._account);
    if (resume) {
      q.set("connection_id", this.connectionId);
      q.set("resume_from", String(this.lastSeq));
      if (this._resumeSecret) q.set("resume_secret", this._resumeSecret);
    }
    return q;
  }

  /** Makes `sock` stale: none of its events is looked at any more. */
  _detach(sock) {
    if (this._sock === sock) this._sock = null;
    clearTimeout(this._liveTimer);
    this._liveTimer = null;
    sock.ws.onopen = sock.ws.onmessage = sock.ws.onclose = null;
  }

  /** (Re)starts the liveness timer: 2 × heartbeat_secs without a frame drops the socket. */
  _armLiveness(sock) {
    clearTimeout(this._liveTimer);
    this._liveTimer = setTimeout(() => {
      if (this._sock !== sock) return;
      this._detach(sock);
      try {
        sock.ws.close(LIVENESS_CLOSE, "liveness timeout");
      } catch (_) {
        // already closing
      }
      this._ended(sock, LIVENESS_CLOSE, "liveness timeout", false);
    }, 2 * this.heartbeatSecs * 1000);
  }

  /** The current socket ended (closed, or dropped as silent). */
  _ended(sock, code, reason, wasClean) {
    this._detach(sock);
    this._emit("close", { code, reason, wasClean });
    if (this.state === "closed") return;
    if (!sock.opened) {
      this._handshakeFailed(sock);
      return;
    }
    if (code === CLOSE.REPLACED) {
      this._emit("replaced", { code, reason });
      this._stop(new CradleError("replaced: another socket took the session", { code: "replaced" }));
      return;
    }
    if (GONE_AFTER_CLOSE[code]) {
      this._gone(GONE_AFTER_CLOSE[code], code);
      this._retry(0);
      return;
    }
    if (sock.ready) {
      this._droppedAt = Date.now();
      this._setState("reconnecting");
    } else if (this._failFastNow()) {
      this._stop(new CradleError(`the first connection closed before its hello (${code})`, { code: "connect_failed", status: code }));
      return;
    }
    this._retry(0);
  }

  /**
   * The handshake failed (no `open`). A browser does not show the HTTP answer, so ask for it:
   * `GET /ws` with the same query and the token as `Authorization: Bearer`. When no answer
   * says why (the page cannot read it, or it is no refusal), the failure counts toward the
   * `refused` / `unreachable` limits.
   */
  async _handshakeFailed(sock) {
    const gen = this._gen;
    const d = await this._diagnose(sock);
    if (gen !== this._gen || this.state === "closed") return;
    if (d && d.status === 410 && sock.resume) {
      this._unexplained = { count: 0, reason: null };
      this._gone("session_gone", 410);
      this._retry(0);
      return;
    }
    if (d && d.fatal) {
      this._fatal(d.status, d.code, d.message);
      return;
    }
    if (d && d.code !== null && d.status === 503) {
      // Cradle says why (busy, shutting down, too many sessions) and that it will pass.
      this._unexplained = { count: 0, reason: null };
      if (this._failFastNow()) {
        this._stop(new CradleError(`the first connection failed (503 ${d.code})`, { code: d.code, status: 503 }));
        return;
      }
      this._retry(d.retryAfterMs);
      return;
    }
    const cause = await this._unexplainedCause(d);
    if (gen !== this._gen || this.state === "closed") return;
    if (this._failFastNow()) {
      const error = new CradleError(`the first connection failed: ${cause.message}`, {
        code: "connect_failed",
        status: d ? d.status : 0,
        reason: cause.reason,
      });
      this._stop(error);
      return;
    }
    const streak = this._unexplained;
    const changed = streak.reason !== null && streak.reason !== cause.reason;
    streak.count += 1;
    streak.reason = cause.reason;
    const limit = cause.reason === "refused" ? this._maxRefused : this._maxUnreachable;
    const report = {
      code: cause.reason,
      message: `${cause.message} (${streak.count} attempts in a row)`,
      status: d ? d.status : 0,
      attempts: streak.count,
    };
    if (limit > 0 && streak.count >= limit) {
      const { message, ...details } = { ...report, message: `${report.message}: stopped`, final: true };
      this._emit("error", { message, ...details });
      this._stop(new CradleError(message, details));
      return;
    }
    if (streak.count === this._reportAfter || (changed && streak.count > this._reportAfter)) {
      this._emit("error", { ...report, final: false });
    }
    this._retry(d && d.status === 503 ? d.retryAfterMs : 0);
  }

  /**
   * Why a handshake failed when no answer tells: `{reason, message}`, reason `refused` (Cradle
   * answers HTTP: most likely the page's origin is not in `http.allowed_origins`) or
   * `unreachable` (no HTTP answer at all, or a proxy's 5xx). `d` is the diagnosis (null: none).
   */
  async _unexplainedCause(d) {
    const page = globalThis.location?.origin ?? "this page's origin";
    if (d === null) {
      if (await this._api.reachable({ timeoutMs: this._diagnoseTimeoutMs })) {
        return {
          reason: "refused",
          message: `${this._api.baseUrl} answers HTTP but refuses this page: its origin (${page}) is not in Cradle's http.allowed_origins, or a proxy strips the CORS headers`,
        };
      }
      return { reason: "unreachable", message: `no answer from ${this._api.baseUrl}: the network or the server is down` };
    }
    const answered = `GET /ws answered ${d.status}${d.code ? ` ${d.code}` : ""}`;
    if (d.status >= 500) {
      return { reason: "unreachable", message: `${answered}: Cradle is not reachable behind the server that answered` };
    }
    if (d.status === 426) {
      return {
        reason: "refused",
        message: `${answered} (the socket would be accepted), yet the browser's handshake failed: this page's origin (${page}) is not in Cradle's http.allowed_origins, or a proxy does not pass WebSocket upgrades`,
      };
    }
    return { reason: "refused", message: `${answered}, and the WebSocket handshake failed` };
  }

  /**
   * The diagnostic request. Resolves with `{status, code, message, retryAfterMs, fatal}`, or
   * null when it got no answer the page can read (network, CORS, timeout).
   */
  async _diagnose(sock) {
    let answer;
    try {
      answer = await this._api._exchange("GET", "ws", { query: sock.query, timeoutMs: this._diagnoseTimeoutMs });
    } catch (_) {
      return null;
    }
    const { res, json } = answer;
    const err = json && typeof json.error === "object" && json.error ? json.error : null;
    const code = err && typeof err.code === "string" ? err.code : null;
    return {
      status: res.status,
      code,
      message: (err && typeof err.message === "string" && err.message) || `HTTP ${res.status}`,
      retryAfterMs: retryAfterMs(res.headers && res.headers.get ? res.headers.get("Retry-After") : null),
      // Only Cradle's own refusal (JSON error body) is final: a proxy's page, or a Cradle
      // that does not answer a plain GET /ws, is retried.
      fatal: code !== null && FATAL_STATUSES.includes(res.status),
    };
  }

  /** Schedules the next attempt after the backoff delay (at least `minMs`). */
  _retry(minMs) {
    if (this.state === "closed") return;
    this._clearRetry();
    const delay = Math.max(minMs || 0, backoffDelay(this._backoff, this._attempt));
    this._attempt += 1;
    this._retryTimer = setTimeout(() => {
      this._retryTimer = null;
      this._open();
    }, delay);
  }

  _clearRetry() {
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
  }

  // ---- frames ----

  _onFrame(sock, data) {
    this._armLiveness(sock);
    if (typeof data !== "string") {
      this._emit("error", { code: "invalid_server_frame", message: "a binary frame from the server" });
      return;
    }
    const frame = parseJson(data);
    if (frame === null || typeof frame !== "object" || Array.isArray(frame)) {
      this._emit("error", { code: "invalid_server_frame", message: "a server frame that is not a JSON object" });
      return;
    }
    const type = frame.type;
    if (type === "hello" && frame.resumed === false && !sock.ready) {
      // A new session: its seq starts again at 1.
      if (sock.resume) {
        sock.resume = false;
        this._gone("not_resumed", null);
        if (this._sock !== sock) return;
      }
      this.lastSeq = 0;
    }
    if (typeof frame.seq === "number") {
      if (frame.seq <= this.lastSeq) return; // a duplicate (replayed): never emitted twice
      this.lastSeq = frame.seq;
    }
    if (!sock.ready && type !== "hello") sock.before += 1;
    switch (type) {
      case "hello":
        this._onHello(sock, frame);
        break;
      case "ping":
        // Only live pings (after this socket's hello): replayed ones need no answer.
        if (sock.ready && sock.ws.readyState === OPEN) sock.ws.send('{"type":"pong"}');
        break;
      case "signal":
      case "presence":
      case "baby_stations":
      case "error":
        this._emit(type, frame);
        break;
      default:
        break; // pong, and types this library does not know
    }
  }

  _onHello(sock, hello) {
    if (typeof hello.connection_id === "string") this.connectionId = hello.connection_id;
    if (typeof hello.resume_secret === "string") this._resumeSecret = hello.resume_secret;
    if (typeof hello.account_id === "string") this.accountId = hello.account_id;
    if (hello.resume_window_secs > 0) this.resumeWindowSecs = hello.resume_window_secs;
    if (hello.heartbeat_secs > 0) {
      this.heartbeatSecs = hello.heartbeat_secs;
      this._armLiveness(sock);
    }
    if (sock.ready) {
      this._emit("hello", hello);
      return;
    }
    sock.ready = true;
    const resumed = sock.resume && hello.resumed === true;
    if (resumed) this.resumeCount += 1;
    else if (this._everHello) this.freshCount += 1;
    this._everHello = true;
    this._attempt = 0;
    this._unexplained = { count: 0, reason: null };
    this._droppedAt = null;
    const changed = this.state !== "open";
    this.state = "open";
    // Queued signals go first, before any handler can send a newer one.
    while (this._queue.length > 0 && sock.ws.readyState === OPEN) sock.ws.send(this._queue.shift().text);
    this._settleConnect(true, hello);
    if (changed) this._emit("state", "open");
    if (this._sock !== sock) return;
    this._emit("hello", hello);
    if (resumed && this._sock === sock) this._emit("resumed", { hello, replayed: sock.before });
  }

  // ---- session and client state ----

  /** The session cannot be resumed: forget it; the next attempt opens a fresh one. */
  _gone(reason, code) {
    this._forgetSession();
    this._attempt = 0;
    if (this.state !== "closed") this._setState("reconnecting");
    this._emit("gone", { reason, code });
  }

  _forgetSession() {
    this.connectionId = null;
    this._resumeSecret = null;
    this.lastSeq = 0;
    this._droppedAt = null;
  }

  _failFastNow() {
    return this._failFast && this._connect !== null && !this._connect.settled;
  }

  /** A refusal retrying cannot fix: `error` event, then stop. */
  _fatal(status, code, message) {
    this._emit("error", { code, message, status });
    this._stop(new CradleError(message, { code, status }));
  }

  /**
   * Stops for good: no socket, no timer, no queue; state "closed"; a pending connect() rejects
   * with `error`, which is also `failure` unless the app closed the client.
   */
  _stop(error) {
    this.failure = error.code === "closed" ? null : error;
    this._gen += 1;
    this._clearRetry();
    if (this._sock) this._detach(this._sock);
    this._queue.length = 0;
    this._settleConnect(false, error);
    this._setState("closed");
  }

  _settleConnect(ok, value) {
    const c = this._connect;
    if (!c || c.settled) return;
    c.settled = true;
    if (ok) c.resolve(value);
    else c.reject(value);
  }

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this._emit("state", state);
  }

  /** Calls the handlers; a handler's exception is rethrown outside the library's call stack. */
  _emit(type, arg) {
    const set = this._handlers.get(type);
    if (!set) return;
    for (const handler of [...set]) call(handler, arg);
  }
}

// ---- helpers ----

/** The `/ws` URL (ws/wss) and the HTTP base (ending in `/`) of a base URL. */
function endpoints(base) {
  const u = new URL(String(base), globalThis.location?.href);
  const http = { "http:": "http:", "https:": "https:", "ws:": "http:", "wss:": "https:" }[u.protocol];
  if (!http) throw new TypeError(`cradle.js: the URL must be http(s) or ws(s), not ${u.protocol}`);
  const ws = http === "https:" ? "wss:" : "ws:";
  const path = u.pathname.endsWith("/") ? u.pathname : `${u.pathname}/`;
  return { http: `${http}//${u.host}${path}`, ws: `${ws}//${u.host}${path}ws` };
}

/** `sessions/{id}`, after checking the id (`what` names the method in the error). */
function sessionPath(what, sessionId) {
  if (typeof sessionId !== "string" || !ID.test(sessionId)) {
    throw new CradleError(`${what}: the session id must be a valid id`, { code: "invalid_parameter" });
  }
  return `sessions/${encodeURIComponent(sessionId)}`;
}

/** The `CradleError` of an answer that is not 2xx: its JSON `error` read when there is one. */
function refusal(method, path, res, text, json) {
  const err = json && typeof json.error === "object" && json.error ? json.error : {};
  const message = typeof err.message === "string" && err.message ? err.message : `HTTP ${res.status}`;
  return new CradleError(message, {
    status: res.status,
    code: typeof err.code === "string" ? err.code : null,
    field: typeof err.field === "string" ? err.field : null,
    body: json ?? text,
    retryAfterMs: retryAfterMs(res.headers && res.headers.get ? res.headers.get("Retry-After") : null),
    method,
    path,
  });
}

/** The `CradleError` of a request that got no answer (`code`: network_error, timeout, aborted). */
function noAnswer(method, path, cause, code) {
  return new CradleError(`${method} ${path}: no answer (${(cause && cause.message) || cause})`, { code, method, path });
}

/**
 * Runs `run(signal, expired)` with a signal that aborts when `signal` does or after
 * `timeoutMs` (0: never); `expired()` tells whether the time ran out.
 */
async function withDeadline(signal, timeoutMs, run) {
  const ctl = new AbortController();
  const abort = () => ctl.abort();
  let expired = false;
  if (signal?.aborted) ctl.abort();
  else signal?.addEventListener("abort", abort, { once: true });
  const timer =
    timeoutMs > 0
      ? setTimeout(() => {
          expired = true;
          ctl.abort();
        }, timeoutMs)
      : null;
  try {
    return await run(ctl.signal, () => expired);
  } finally {
    clearTimeout(timer);
    signal?.removeEventListener("abort", abort);
  }
}

/** Resolves after `ms`, or at once when `signal` aborts. */
function sleep(ms, signal) {
  return new Promise((resolve) => {
    if (signal?.aborted) {
      resolve();
      return;
    }
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener("abort", done, { once: true });
  });
}

/** Backoff settings with their defaults (250, 10000, 2, 0.5). */
function backoffOf(b) {
  const o = b || {};
  return {
    initialMs: positive(o.initialMs, 250),
    maxMs: positive(o.maxMs, 10000),
    factor: Math.max(1, positive(o.factor, 2)),
    jitter: Math.min(1, Math.max(0, finite(o.jitter, 0.5))),
  };
}

/** The delay before the n-th consecutive retry (from 0). */
function backoffDelay({ initialMs, maxMs, factor, jitter }, n) {
  const ceiling = Math.min(maxMs, initialMs * Math.pow(factor, n));
  return ceiling * (1 - jitter * Math.random());
}

/** Calls an app's callback; its exception is rethrown outside the library's call stack. */
function call(callback, ...args) {
  try {
    callback(...args);
  } catch (e) {
    setTimeout(() => {
      throw e;
    }, 0);
  }
}

function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch (_) {
    return null;
  }
}

/** Retry-After in milliseconds (seconds or an HTTP date); 0 when absent or unreadable. */
function retryAfterMs(value) {
  if (value == null || value === "") return 0;
  const secs = Number(value);
  if (Number.isFinite(secs)) return Math.max(0, secs * 1000);
  const at = Date.parse(value);
  return Number.isFinite(at) ? Math.max(0, at - Date.now()) : 0;
}

function utf8Length(text) {
  return new TextEncoder().encode(text).length;
}

function finite(value, fallback) {
  return typeof value === "number" && Number.isFinite(value) ? value : fallback;
}

function positive(value, fallback) {
  return typeof value === "number" && Number.isFinite(value) && value > 0 ? value : fallback;
}

/** A whole number ≥ 0 (`Infinity` counts as 0: no limit), or `fallback`. */
function nonNegative(value, fallback) {
  if (value === Infinity) return 0;
  return typeof value === "number" && Number.isFinite(value) && value >= 0 ? Math.floor(value) : fallback;
}
