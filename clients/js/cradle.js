// cradle.js: the browser client of Cradle's WebSocket bridge (docs/websocket.md, section
// "The JavaScript client library"). One dependency-free ES module (ES2020), imported as is:
//
//   import { CradleClient, CLOSE } from "./cradle.js";
//
// It keeps one session of the bridge alive: it tracks `seq` and drops duplicates, answers the
// server's heartbeats, notices a silent socket, resumes a dropped session with backoff, opens a
// fresh session when the old one is gone (and says so), queues signals while reconnecting, and
// starts and ends monitoring sessions over HTTP (PUT / DELETE /sessions/{session_id}).

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

/** A valid id: 1-128 characters of `A-Z a-z 0-9 - _ . : @` (topics.md). */
const ID = /^[A-Za-z0-9_.:@-]{1,128}$/;

/** WebSocket.readyState OPEN (a fake WebSocket class need not define the constant). */
const OPEN = 1;

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
 * @property {{initialMs?: number, maxMs?: number, factor?: number, jitter?: number}} [backoff]
 *   Reconnect delays: `random(1 - jitter .. 1) × min(maxMs, initialMs × factor^n)` for the n-th
 *   consecutive failed attempt. Defaults 250, 10000, 2, 0.5 (`jitter: 1` is full jitter).
 * @property {boolean} [failFast]  Make `connect()` reject (and the client close) when its first
 *   attempt fails for any reason; by default only a fatal refusal (400/401/403) rejects, anything
 *   else is retried with backoff.
 * @property {number} [queueSize]  Signals kept while reconnecting (default 256); when full the
 *   oldest is dropped with an `error` event `{code: "queue_full"}`.
 * @property {number} [maxFrameBytes]  `signal()` throws a RangeError for a frame larger than this
 *   (UTF-8 bytes; default 65536, Cradle's default `websocket.max_frame_bytes`; 0: no check).
 * @property {number} [heartbeatSecs]  Heartbeat assumed until the first `hello` says (default 15).
 * @property {number} [diagnoseTimeoutMs]  Timeout of the diagnostic `GET /ws` (default 10000).
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
 *   `{code, message, status?, dropped?}` (codes `queue_full`, `invalid_server_frame`, and the
 *   fatal refusals of `/ws` with their HTTP `status`);
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
    const b = o.backoff || {};

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
    this._httpBase = ends.http;
    this._backoff = {
      initialMs: positive(b.initialMs, 250),
      maxMs: positive(b.maxMs, 10000),
      factor: Math.max(1, positive(b.factor, 2)),
      jitter: Math.min(1, Math.max(0, finite(b.jitter, 0.5))),
    };
    this._failFast = Boolean(o.failFast);
    this._queueSize = Math.max(1, Math.floor(positive(o.queueSize, 256)));
    this._maxFrameBytes = Math.max(0, finite(o.maxFrameBytes, 65536));
    this._diagnoseTimeoutMs = positive(o.diagnoseTimeoutMs, 10000);
    this._WebSocket = o.WebSocket ?? globalThis.WebSocket;
    // Called unbound: a browser's fetch refuses any `this` but the window.
    this._fetch = o.fetch ?? ((input, init) => globalThis.fetch(input, init));
    if (typeof this._WebSocket !== "function") throw new TypeError("CradleClient: no WebSocket class");

    this._resumeSecret = null;
    this._handlers = new Map();
    this._queue = [];
    this._sock = null; // the current socket's record; every other socket is stale
    this._gen = 0; // bumped by every attempt and by a stop: late async results are dropped
    this._attempt = 0; // consecutive failed attempts: the backoff exponent
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
   * @throws {Error} with `.status` (0 when no answer) and `.code` (the answer's `error.code`)
   */
  async startSession(sessionId, { connectionId, clientId, name, startedAtMillis } = {}) {
    const connection = connectionId ?? this.connectionId;
    if (typeof connection !== "string") {
      throw localError("startSession: no connectionId (and no session yet)", "invalid_parameter");
    }
    const client = clientId !== undefined ? clientId : connectionId === undefined ? this.clientId : null;
    const body = {
      session_id: sessionId,
      connection_id: connection,
      name,
      started_at_millis: startedAtMillis ?? Date.now(),
    };
    if (client != null) body.client_id = client;
    return this._http("PUT", sessionId, body);
  }

  /**
   * Ends a monitoring session: `DELETE /sessions/{sessionId}`.
   * @param {string} sessionId
   * @returns {Promise<object>} the answer, `{session_id, account_id, status}`
   * @throws {Error} with `.status` and `.code`, as `startSession`
   */
  async endSession(sessionId) {
    return this._http("DELETE", sessionId, undefined);
  }

  /**
   * Closes the socket with 1000 ("bye"), which ends the session on the server (`clean`); no
   * reconnect. Queued signals are dropped; a pending `connect()` rejects. State "closed".
   */
  close() {
    if (this.state === "closed") return;
    const sock = this._sock;
    this._stop(localError("the client was closed", "closed"));
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

  /** The query of `/ws`: the token is never in it. */
  _query(resume) {
    const q = new URLSearchParams();
    q.set("client_id", this.clientId);
    if (this._account) q.set("account", this._account);
    if (resume) {
      q.set("connection_id", this.connectionId);
      q.set("resume_from", String(this.lastSeq));
      if (this._resumeSecret) q.set("resume_secret", this._resumeSecret);
    }
    return q.toString();
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
      this._stop(localError("replaced: another socket took the session", "replaced"));
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
      this._stop(localError(`the first connection closed before its hello (${code})`, "connect_failed", code));
      return;
    }
    this._retry(0);
  }

  /**
   * The handshake failed (no `open`). A browser does not show the HTTP answer, so ask for it:
   * `GET /ws` with the same query and the token as `Authorization: Bearer`.
   */
  async _handshakeFailed(sock) {
    const gen = this._gen;
    const d = await this._diagnose(sock);
    if (gen !== this._gen || this.state === "closed") return;
    if (d && d.status === 410 && sock.resume) {
      this._gone("session_gone", 410);
      this._retry(0);
      return;
    }
    if (d && d.fatal) {
      this._fatal(d.status, d.code, d.message);
      return;
    }
    if (this._failFastNow()) {
      const why = d ? `${d.status} ${d.code || ""}`.trim() : "no answer";
      this._stop(localError(`the first connection failed (${why})`, (d && d.code) || "connect_failed", d ? d.status : 0));
      return;
    }
    this._retry(d && d.status === 503 ? d.retryAfterMs : 0);
  }

  /**
   * The diagnostic request. Resolves with `{status, code, message, retryAfterMs, fatal}`, or
   * null when it got no answer (network, CORS, timeout).
   */
  async _diagnose(sock) {
    const headers = {};
    if (this._token) headers.Authorization = `Bearer ${this._token}`;
    const ctl = typeof AbortController === "function" ? new AbortController() : null;
    const timer = ctl ? setTimeout(() => ctl.abort(), this._diagnoseTimeoutMs) : null;
    try {
      const init = { method: "GET", headers, cache: "no-store" };
      if (ctl) init.signal = ctl.signal;
      const res = await this._fetch(`${this._httpBase}ws?${sock.query}`, init);
      const body = parseJson(await res.text().catch(() => ""));
      const err = body && typeof body.error === "object" && body.error ? body.error : null;
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
    } catch (_) {
      return null;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Schedules the next attempt after the backoff delay (at least `minMs`). */
  _retry(minMs) {
    if (this.state === "closed") return;
    this._clearRetry();
    const { initialMs, maxMs, factor, jitter } = this._backoff;
    const ceiling = Math.min(maxMs, initialMs * Math.pow(factor, this._attempt));
    const delay = Math.max(minMs || 0, ceiling * (1 - jitter * Math.random()));
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
    this._stop(localError(message, code, status));
  }

  /** Stops for good: no socket, no timer, no queue; state "closed"; a pending connect() rejects. */
  _stop(error) {
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
    for (const handler of [...set]) {
      try {
        handler(arg);
      } catch (e) {
        setTimeout(() => {
          throw e;
        }, 0);
      }
    }
  }

  // ---- HTTP ----

  async _http(method, sessionId, body) {
    if (typeof sessionId !== "string" || !ID.test(sessionId)) {
      throw localError(`${method} /sessions: the session id must be a valid id`, "invalid_parameter");
    }
    const path = `sessions/${encodeURIComponent(sessionId)}`;
    const headers = {};
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (this._token) headers.Authorization = `Bearer ${this._token}`;
    if (this._account) headers["X-Cradle-Account"] = this._account;
    const init = { method, headers, cache: "no-store" };
    if (body !== undefined) init.body = JSON.stringify(body);
    let res;
    try {
      res = await this._fetch(this._httpBase + path, init);
    } catch (e) {
      throw localError(`${method} /${path}: no answer (${e && e.message})`, "network_error", 0);
    }
    const text = await res.text().catch(() => "");
    const json = parseJson(text);
    if (!res.ok) {
      const err = json && typeof json.error === "object" && json.error ? json.error : {};
      const error = localError(
        `${method} /${path}: ${res.status}${err.message ? ` ${err.message}` : ""}`,
        typeof err.code === "string" ? err.code : null,
        res.status,
      );
      error.field = typeof err.field === "string" ? err.field : null;
      error.body = json ?? text;
      throw error;
    }
    return json;
  }
}

// ---- helpers ----

/** The `/ws` URL (ws/wss) and the HTTP base (ending in `/`) of a base URL. */
function endpoints(base) {
  const u = new URL(String(base), globalThis.location?.href);
  const http = { "http:": "http:", "https:": "https:", "ws:": "http:", "wss:": "https:" }[u.protocol];
  if (!http) throw new TypeError(`CradleClient: url must be http(s) or ws(s), not ${u.protocol}`);
  const ws = http === "https:" ? "wss:" : "ws:";
  const path = u.pathname.endsWith("/") ? u.pathname : `${u.pathname}/`;
  return { http: `${http}//${u.host}${path}`, ws: `${ws}//${u.host}${path}ws` };
}

function localError(message, code, status = 0) {
  const error = new Error(message);
  error.code = code;
  error.status = status;
  return error;
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
