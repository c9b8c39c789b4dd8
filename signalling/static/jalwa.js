// jalwa.js: a small, dependency-free client of jalwa's WebSocket protocol (docs/protocol.md)
// and REST API (docs/api.md). An ES module; use it as it is or copy it. docs/client.md.
//
//   import { JalwaClient } from "/jalwa.js";
//   const jalwa = new JalwaClient({ token });
//   jalwa.on("call.incoming", (m) => jalwa.accept(m.call_id));
//   const welcome = await jalwa.connect();
//   await jalwa.matchRandom();            // resolves on the ack, rejects with a JalwaError
//
// Reconnects by itself when the connection drops (not when the server refused the session:
// a bad token, a ban, a newer session) and resumes the session when the server keeps it
// (welcome.resume_token): every frame missed meanwhile arrives, in order, exactly once.

/** A refusal from the server: `code` is the protocol's error code (or close code). */
export class JalwaError extends Error {
  constructor(code, message) {
    super(message || code);
    this.name = "JalwaError";
    this.code = code;
  }
}

// Close codes after which reconnecting cannot help (docs/protocol.md §7).
const FINAL_CLOSES = new Set([4001, 4003, 4009]);
const NORMAL = 1000;

export class JalwaClient {
  /**
   * @param {object} options
   * @param {string | (() => string | Promise<string>)} options.token a JWT, or a function
   *   returning a fresh one (called on every (re)connect)
   * @param {string} [options.url] the server's base URL (default: this page's origin)
   * @param {boolean} [options.reconnect] reconnect when the connection drops (default true)
   * @param {number} [options.requestTimeoutMs] a request without a reply fails (default 15 s)
   */
  constructor({ token, url, reconnect = true, requestTimeoutMs = 15000 } = {}) {
    this.base = (url || globalThis.location?.origin || "").replace(/\/$/, "");
    this._token = token;
    this.reconnect = reconnect;
    this.requestTimeoutMs = requestTimeoutMs;
    this.welcome = null;     // the last welcome
    this.connected = false;
    this._ws = null;
    this._seq = 0;           // frames received after the welcome (what a resume counts)
    this._resume = null;     // the resume token of the session to come back to
    this._nextId = 0;
    this._pending = new Map();  // request id -> {resolve, reject, timer}
    this._handlers = new Map(); // type -> Set(handler)
    this._stopped = false;
    this._retries = 0;
  }

  /** Call `handler(message)` for every message of this type; "*" for all. Returns an
   *  unsubscribe function. Lifecycle events: "open" (the welcome), "close"
   *  ({code, reason, final}), "reconnecting" ({attempt, delayMs}). */
  on(type, handler) {
    if (!this._handlers.has(type)) this._handlers.set(type, new Set());
    this._handlers.get(type).add(handler);
    return () => this._handlers.get(type)?.delete(handler);
  }

  /** The next message of this type (optionally one that `match`es), as a promise. */
  next(type, match = () => true, timeoutMs = this.requestTimeoutMs) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => { off(); reject(new JalwaError("timeout", `no ${type}`)); }, timeoutMs);
      const off = this.on(type, (m) => {
        if (!match(m)) return;
        clearTimeout(timer); off(); resolve(m);
      });
    });
  }

  /** Open the session; resolves with the welcome. */
  connect() {
    this._stopped = false;
    return this._open();
  }

  /** Close for good (no reconnect); the server ends what needs ending. */
  close() {
    this._stopped = true;
    this._resume = null;
    if (this._ws) this._ws.close(NORMAL, "bye");
  }

  /** Send a client message and wait for its reply: the ack (resolved) or an error
   *  (rejected with a JalwaError carrying the code). */
  request(type, fields = {}) {
    const ws = this._ws;
    if (!ws || ws.readyState !== WebSocket.OPEN || !this.connected) {
      return Promise.reject(new JalwaError("not_connected", `not connected: ${type} not sent`));
    }
    const id = String(++this._nextId);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new JalwaError("timeout", `no reply to ${type}`));
      }, this.requestTimeoutMs);
      this._pending.set(id, { resolve, reject, timer });
      ws.send(JSON.stringify({ ...fields, type, id }));
    });
  }

  /** Send a message that expects no reply (typing notices, receipts). */
  notify(type, fields = {}) {
    if (this._ws && this._ws.readyState === WebSocket.OPEN) {
      this._ws.send(JSON.stringify({ ...fields, type }));
    }
  }

  // --- helpers: presence, match, calls, chat, gifts (docs/protocol.md) ------------------

  setStatus(status, extra = {}) { return this.request("presence.update", { status, ...extra }); }
  watch(userIds) { return this.request("presence.watch", { user_ids: userIds }); }
  matchRandom(filters) { return this.request("match.request", { mode: "random", ...(filters ? { filters } : {}) }); }
  matchNearby(location, radiusKm) {
    return this.request("match.request", { mode: "nearby", location, ...(radiusKm ? { radius_km: radiusKm } : {}) });
  }
  cancelMatch() { return this.request("match.cancel"); }
  invite(to) { return this.request("call.invite", { to }); }
  accept(callId) { return this.request("call.accept", { call_id: callId }); }
  reject(callId) { return this.request("call.reject", { call_id: callId }); }
  cancel(callId) { return this.request("call.cancel", { call_id: callId }); }
  hangUp(callId) { return this.request("call.end", { call_id: callId }); }
  sendChat(to, text, clientMsgId = randomId()) {
    return this.request("chat.send", { to, text, client_msg_id: clientMsgId });
  }
  markDelivered(messageIds) { return this.request("chat.delivered", { message_ids: messageIds }); }
  markRead(messageIds) { return this.request("chat.read", { message_ids: messageIds }); }
  typing(to) { this.notify("chat.typing", { to }); }
  history(conversationId, before, limit = 50) {
    return this.request("chat.history", { conversation_id: conversationId, limit, ...(before ? { before } : {}) });
  }
  sendGift(to, giftId, callId, key = randomId()) {
    return this.request("gift.send", { to, gift_id: giftId, idempotency_key: key, ...(callId ? { call_id: callId } : {}) });
  }

  // --- REST (docs/api.md) ------------------------------------------------------------------

  async rest(method, path, body) {
    const headers = { Authorization: "Bearer " + (await this._currentToken()) };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const resp = await fetch(this.base + path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    });
    const data = await resp.json().catch(() => ({}));
    if (!resp.ok) throw new JalwaError(data.error || `http_${resp.status}`, data.message);
    return data;
  }
  wallet() { return this.rest("GET", "/v1/wallet"); }
  gifts() { return this.rest("GET", "/v1/gifts"); }
  calls() { return this.rest("GET", "/v1/calls"); }

  // --- the connection ----------------------------------------------------------------------

  async _currentToken() {
    return typeof this._token === "function" ? await this._token() : this._token;
  }

  async _open() {
    let token;
    try {
      token = await this._currentToken();
    } catch (e) {
      if (this._retries > 0 && !this._stopped) this._scheduleReconnect();
      throw e;
    }
    const wsBase = this.base.replace(/^http/, "ws");
    let query = "token=" + encodeURIComponent(token);
    if (this._resume) query += `&resume=${encodeURIComponent(this._resume)}&last_seq=${this._seq}`;
    const ws = new WebSocket(`${wsBase}/v1/ws?${query}`);
    this._ws = ws;
    return new Promise((resolve, reject) => {
      let welcomed = false;
      ws.onmessage = (event) => {
        let message;
        try { message = JSON.parse(event.data); } catch { return; }
        if (!welcomed) {
          if (message.type !== "welcome") return;
          welcomed = true;
          this._welcomed(message);
          resolve(message);
          return;
        }
        this._seq += 1;
        this._dispatch(message);
      };
      ws.onclose = (event) => {
        if (this._ws === ws) this._closed(event);
        if (!welcomed) reject(new JalwaError(event.reason || `closed_${event.code}`, `closed ${event.code}`));
      };
    });
  }

  _welcomed(welcome) {
    if (!welcome.resumed) this._seq = 0;  // a fresh session counts from its welcome
    this.welcome = welcome;
    this._resume = welcome.resume_token || null;
    this.connected = true;
    this._retries = 0;
    this._emit("open", welcome, true);
    this._emit("welcome", welcome);
  }

  _dispatch(message) {
    if ((message.type === "ack" || message.type === "error") && this._pending.has(message.id)) {
      const { resolve, reject, timer } = this._pending.get(message.id);
      this._pending.delete(message.id);
      clearTimeout(timer);
      if (message.type === "ack") resolve(message);
      else reject(new JalwaError(message.code, message.message));
    }
    this._emit(message.type, message);
  }

  _emit(type, message, lifecycle = false) {
    // "*" hears the server's messages; lifecycle events only reach their own subscribers.
    for (const key of lifecycle ? [type] : [type, "*"]) {
      for (const handler of this._handlers.get(key) || []) {
        try { handler(message); } catch (e) { console.error("jalwa handler failed", e); }
      }
    }
  }

  _closed(event) {
    this.connected = false;
    this._ws = null;
    // Requests in flight get no reply on this connection: fail them now.
    for (const [id, { reject, timer }] of this._pending) {
      clearTimeout(timer);
      reject(new JalwaError("connection_lost", "the connection closed before the reply"));
      this._pending.delete(id);
    }
    const final = this._stopped || FINAL_CLOSES.has(event.code) || !this.reconnect;
    if (FINAL_CLOSES.has(event.code)) this._resume = null;
    this._emit("close", { code: event.code, reason: event.reason, final }, true);
    if (!final) this._scheduleReconnect();
  }

  _scheduleReconnect() {
    const attempt = ++this._retries;
    // Exponential backoff with jitter: 0.25 s, 0.5 s, 1 s ... at most 15 s.
    const delayMs = Math.min(15000, 250 * 2 ** (attempt - 1)) * (0.5 + Math.random() / 2);
    this._emit("reconnecting", { attempt, delayMs }, true);
    setTimeout(() => {
      if (this._stopped) return;
      this._open().catch(() => {});  // a failed attempt schedules the next one itself
    }, delayMs);
  }
}

function randomId() {
  return globalThis.crypto?.randomUUID?.() || String(Date.now()) + Math.random().toString(16).slice(2);
}
