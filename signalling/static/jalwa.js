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
  typing(to, typing = true) { this.notify("chat.typing", { to, typing }); }
  history(conversationId, before, limit = 50) {
    return this.request("chat.history", { conversation_id: conversationId, limit, ...(before ? { before } : {}) });
  }
  sendGift(to, giftId, callId, key = randomId()) {
    return this.request("gift.send", { to, gift_id: giftId, idempotency_key: key, ...(callId ? { call_id: callId } : {}) });
  }

  /** WebRTC for this client's calls (a JalwaMedia); see that class. */
  media(options) { return new JalwaMedia(this, options); }

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
  hosts(limit = 50) { return this.rest("GET", `/v1/hosts?limit=${limit}`); }

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

/**
 * The media of this client's calls: one RTCPeerConnection per call, negotiated with the SFU
 * (`media: "sfu"`: each party offers to the server) or with the peer (`"p2p"`: the party who
 * rang offers), with the ICE servers of `welcome.ice_servers` (TURN credentials included).
 * It follows the call by itself: starts on `call.started`, offers again after a reconnect
 * that did not resume the session (the server's side of the old connection is gone), and
 * closes on `call.ended`. Candidates trickle as `rtc.ice`.
 *
 *   const media = jalwa.media({
 *     onRemoteStream: (stream) => { remoteVideo.srcObject = stream; },
 *     onLocalStream: (stream) => { localVideo.srcObject = stream; },
 *     onState: (state) => show(state),     // the RTCPeerConnection's connectionState, or "closed"
 *     onError: (e) => show(e.message),      // getUserMedia refused, a bad offer...
 *   });
 */
export class JalwaMedia {
  /**
   * @param {JalwaClient} client
   * @param {object} [options]
   * @param {() => Promise<MediaStream>} [options.getLocalStream] the camera and microphone
   *   (default: getUserMedia audio+video); when it fails the call goes on receive-only
   */
  constructor(client, { getLocalStream, onLocalStream, onRemoteStream, onState, onError } = {}) {
    this.client = client;
    this.getLocalStream = getLocalStream ||
      (() => navigator.mediaDevices.getUserMedia({ audio: true, video: true }));
    this.onLocalStream = onLocalStream || (() => {});
    this.onRemoteStream = onRemoteStream || (() => {});
    this.onState = onState || (() => {});
    this.onError = onError || ((e) => console.warn("jalwa media", e));
    this.pc = null;
    this.callId = null;
    this.localStream = null;
    this.remoteStream = null;
    this._rang = new Set();     // calls this client rang (in p2p mode it offers)
    this._ready = null;         // the local tracks are on this.pc
    this._iceQueue = [];        // candidates that came before the remote description
    this._muted = { audio: false, video: false };
    this._off = [
      client.on("call.ringing", (m) => this._rang.add(m.call_id)),
      client.on("call.started", (m) => this._start(m.call_id, m.media === "sfu" || this._rang.has(m.call_id))),
      client.on("call.ended", (m) => { this._rang.delete(m.call_id); if (m.call_id === this.callId) this.stop(); }),
      client.on("open", (w) => this._welcomed(w)),
      client.on("rtc.offer", (m) => this._onOffer(m).catch((e) => this._fail("answering the offer", e))),
      client.on("rtc.answer", (m) => this._onAnswer(m).catch((e) => this._fail("applying the answer", e))),
      client.on("rtc.ice", (m) => this._onIce(m)),
      client.on("close", (e) => { if (e.final) this.stop(); }),
    ];
  }

  /** Enable or disable the local "audio" or "video" track (the peer sees black / hears
   *  silence; nothing is renegotiated). */
  setEnabled(kind, enabled) {
    this._muted[kind] = !enabled;
    for (const track of this.localStream?.getTracks() || []) {
      if (track.kind === kind) track.enabled = enabled;
    }
  }

  /** Close the peer connection and release the camera. */
  stop() {
    const pc = this.pc;
    this.pc = null;
    this.callId = null;
    this._ready = null;
    this._iceQueue = [];
    if (pc) {
      pc.onicecandidate = pc.ontrack = pc.onconnectionstatechange = null;
      pc.close();
    }
    for (const track of this.localStream?.getTracks() || []) track.stop();
    const had = pc || this.localStream || this.remoteStream;
    this.localStream = this.remoteStream = null;
    if (had) this.onState("closed");
  }

  /** Stop following the client's calls. */
  detach() {
    this.stop();
    this._off.forEach((off) => off());
  }

  _welcomed(welcome) {
    // A resumed session kept its server side: the peer connection goes on untouched.
    if (welcome.resumed) return;
    const call = welcome.call;
    if (call && call.role === "caller") this._rang.add(call.call_id);
    if (call && call.state === "active") this._start(call.call_id, true);  // the one back offers
    else this.stop();
  }

  _iceServers() {
    return (this.client.welcome?.ice_servers || []).map((s) => ({
      urls: s.urls,
      ...(s.username != null ? { username: s.username } : {}),
      ...(s.credential != null ? { credential: s.credential } : {}),
    }));
  }

  _start(callId, offer) {
    this.stop();
    const pc = new RTCPeerConnection({ iceServers: this._iceServers() });
    this.pc = pc;
    this.callId = callId;
    // Assigned (not addEventListener) so an app can wrap the handler, e.g. to filter.
    pc.onicecandidate = (e) => {
      if (this.pc !== pc) return;
      const c = e.candidate;
      // An empty candidate string is Chrome's end-of-candidates marker for one m-line.
      if (c && !c.candidate) return;
      this.client.notify("rtc.ice", c
        ? { call_id: callId, candidate: c.candidate, sdp_mid: c.sdpMid, sdp_mline_index: c.sdpMLineIndex }
        : { call_id: callId, candidate: null });
    };
    pc.ontrack = (e) => {
      if (this.pc !== pc) return;
      const stream = e.streams[0] || this.remoteStream || new MediaStream();
      if (!e.streams[0]) stream.addTrack(e.track);
      if (this.remoteStream !== stream) {
        this.remoteStream = stream;
        this.onRemoteStream(stream);
      }
    };
    pc.onconnectionstatechange = () => { if (this.pc === pc) this.onState(pc.connectionState); };
    this.onState(pc.connectionState);
    this._ready = (async () => {
      let stream = null;
      try {
        stream = await this.getLocalStream();
      } catch (e) {
        this._fail("camera or microphone unavailable, receiving only", e);
      }
      if (this.pc !== pc) { stream?.getTracks().forEach((t) => t.stop()); return; }
      if (stream) {
        this.localStream = stream;
        for (const track of stream.getTracks()) {
          track.enabled = !this._muted[track.kind];
          pc.addTrack(track, stream);
        }
        this.onLocalStream(stream);
      } else if (offer) {
        pc.addTransceiver("audio", { direction: "recvonly" });
        pc.addTransceiver("video", { direction: "recvonly" });
      }
      if (offer) {
        await pc.setLocalDescription(await pc.createOffer());
        if (this.pc === pc) await this.client.request("rtc.offer", { call_id: callId, sdp: pc.localDescription.sdp });
      }
    })().catch((e) => this._fail("offering media", e));
  }

  async _onOffer(m) {
    // p2p: the peer offers (first, or again after its reconnect: a new connection).
    if (this.callId !== null && m.call_id !== this.callId) return;
    if (!this.pc || this.pc.remoteDescription) this._start(m.call_id, false);
    const pc = this.pc;
    await this._ready;
    if (this.pc !== pc) return;
    await pc.setRemoteDescription({ type: "offer", sdp: m.sdp });
    this._flushIce();
    await pc.setLocalDescription(await pc.createAnswer());
    if (this.pc === pc) await this.client.request("rtc.answer", { call_id: m.call_id, sdp: pc.localDescription.sdp });
  }

  async _onAnswer(m) {
    const pc = this.pc;
    if (!pc || m.call_id !== this.callId) return;
    await this._ready;
    if (this.pc !== pc || pc.signalingState !== "have-local-offer") return;
    await pc.setRemoteDescription({ type: "answer", sdp: m.sdp });
    this._flushIce();
  }

  _onIce(m) {
    if (m.call_id !== this.callId) return;
    const init = m.candidate == null ? null
      : { candidate: m.candidate, sdpMid: m.sdp_mid, sdpMLineIndex: m.sdp_mline_index };
    if (this.pc?.remoteDescription) this._addIce(init);
    else this._iceQueue.push(init);
  }

  _addIce(init) {
    (init ? this.pc.addIceCandidate(init) : this.pc.addIceCandidate())
      .catch((e) => this._fail("adding a candidate", e));
  }

  _flushIce() {
    const queued = this._iceQueue;
    this._iceQueue = [];
    queued.forEach((init) => this._addIce(init));
  }

  _fail(what, e) {
    const error = e instanceof JalwaError ? e : new JalwaError("media_error", `${what}: ${e?.name ? e.name + ": " : ""}${e?.message || e}`);
    this.onError(error);
  }
}

/** The id of the 1:1 conversation between two users (docs/protocol.md §9.4). */
export function conversationId(a, b) {
  const esc = (u) => u.replace(/%/g, "%25").replace(/:/g, "%3A");
  const [lo, hi] = a < b ? [a, b] : [b, a];
  return `dm:${esc(lo)}:${esc(hi)}`;
}

function randomId() {
  return globalThis.crypto?.randomUUID?.() || String(Date.now()) + Math.random().toString(16).slice(2);
}
