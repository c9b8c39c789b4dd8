// The chat beside the call: history, live messages, typing, and sent / delivered / read ticks.
import { conversationId } from "/jalwa.js";
import { problem } from "/app/words.js";

const TICKS = { pending: "…", sent: "✓", delivered: "✓✓", read: "✓✓", failed: "!" };
const TYPING_IDLE_MS = 3000;   // stop saying "typing" after this long without a key
const TYPING_SHOWN_MS = 6000;  // hide the peer's "typing" if no update comes

export class ChatPanel {
  /** @param {import("/jalwa.js").JalwaClient} client */
  constructor(client, els, { onNotice }) {
    this.client = client;
    this.els = els;
    this.onNotice = onNotice;
    this.peer = null;          // {id, name}
    this.items = new Map();    // message id (or client_msg_id while pending) -> <li>
    this.before = null;        // cursor of the next older page
    this._typingSent = false;
    this._typingTimer = null;
    this._shownTimer = null;
    client.on("chat.message", (m) => this._incoming(m.message || m));
    client.on("chat.receipt", (m) => m.message_ids.forEach((id) => this._tick(id, m.status)));
    client.on("chat.typing", (m) => this._peerTyping(m));
    els.form.addEventListener("submit", (ev) => { ev.preventDefault(); this.send(); });
    els.input.addEventListener("input", () => this._typing());
    els.older.addEventListener("click", () => this._page());
    document.addEventListener("visibilitychange", () => this._readVisible());
  }

  me() { return this.client.welcome?.user.id; }

  /** Show the conversation with this peer, newest page first. */
  async open(peer) {
    if (this.peer?.id === peer.id) return;
    this.peer = peer;
    this.items.clear();
    this.before = null;
    this.els.list.textContent = "";
    this.els.peer.textContent = peer.name || peer.id;
    await this._page();
  }

  close() {
    this._stopTyping();
    this.peer = null;
  }

  async send() {
    const text = this.els.input.value.trim();
    if (!text || !this.peer) return;
    this.els.input.value = "";
    this._stopTyping();
    const clientMsgId = crypto.randomUUID();
    const li = this._render({ id: clientMsgId, from: this.me(), text, status: "pending" });
    try {
      const ack = await this.client.sendChat(this.peer.id, text, clientMsgId);
      this.items.delete(clientMsgId);
      li.remove();
      this._render(ack.message);
    } catch (e) {
      this._setStatus(li, "failed");
      this.onNotice(problem(e), "bad");
    }
  }

  async _page() {
    const peer = this.peer;
    if (!peer) return;
    let ack;
    try {
      ack = await this.client.history(conversationId(this.me(), peer.id), this.before, 30);
    } catch (e) {
      this.onNotice(problem(e), "bad");
      return;
    }
    if (this.peer !== peer) return;
    // Newest first: put each one above what is shown.
    for (const m of ack.messages) this._render(m, { top: true });
    this.before = ack.next_before || null;
    this.els.older.hidden = !this.before;
    this._receive(ack.messages.filter((m) => m.to === this.me() && m.status !== "read"));
  }

  _incoming(m) {
    if (m.to !== this.me()) return;
    if (this.peer && m.from === this.peer.id) {
      this._render(m);
      this._showTyping(false);
    } else if (!this.items.has(m.id)) {
      this.onNotice(`New message from ${m.from}`, "");
    }
    this._receive([m]);
  }

  /** Messages reached this device: delivered now, read when the chat is in view. */
  _receive(messages) {
    const fresh = messages.filter((m) => m.status === "sent").map((m) => m.id);
    if (fresh.length) this.client.markDelivered(fresh).catch(() => {});
    this._readVisible();
  }

  _readVisible() {
    if (!this.peer || document.visibilityState !== "visible") return;
    const unread = [];
    for (const [id, li] of this.items) {
      if (li.dataset.from === this.peer.id && li.dataset.read !== "1") { li.dataset.read = "1"; unread.push(id); }
    }
    if (unread.length) this.client.markRead(unread).catch(() => {});
  }

  _render(m, { top = false } = {}) {
    const existing = this.items.get(m.id);
    if (existing) { this._setStatus(existing, m.status); return existing; }
    const li = document.createElement("li");
    li.dataset.id = m.id;
    li.dataset.from = m.from;
    if (m.from !== this.me() && m.status === "read") li.dataset.read = "1";
    li.textContent = m.text;
    if (m.from === this.me()) {
      li.classList.add("mine");
      li.append(Object.assign(document.createElement("span"), { className: "tick" }));
      this._setStatus(li, m.status);
    }
    this.items.set(m.id, li);
    const list = this.els.list;
    const atEnd = list.scrollTop + list.clientHeight >= list.scrollHeight - 8;
    if (top) list.prepend(li); else list.append(li);
    if (!top && atEnd) list.scrollTop = list.scrollHeight;
    if (top && list.childElementCount <= 30) list.scrollTop = list.scrollHeight;
    return li;
  }

  _tick(id, status) {
    const li = this.items.get(id);
    if (li && li.classList.contains("mine")) this._setStatus(li, status);
  }

  _setStatus(li, status) {
    const order = ["failed", "pending", "sent", "delivered", "read"];
    if (order.indexOf(status) < order.indexOf(li.dataset.status || "failed") && status !== "failed") return;
    li.dataset.status = status;
    const tick = li.querySelector(".tick");
    if (tick) {
      tick.textContent = TICKS[status] || "";
      tick.className = "tick " + status;
      tick.title = status;
    }
  }

  _typing() {
    if (!this.peer) return;
    if (!this._typingSent) { this.client.typing(this.peer.id, true); this._typingSent = true; }
    clearTimeout(this._typingTimer);
    this._typingTimer = setTimeout(() => this._stopTyping(), TYPING_IDLE_MS);
  }

  _stopTyping() {
    clearTimeout(this._typingTimer);
    if (this._typingSent && this.peer) this.client.typing(this.peer.id, false);
    this._typingSent = false;
  }

  _peerTyping(m) {
    if (this.peer && m.from === this.peer.id) this._showTyping(m.typing);
  }

  _showTyping(on) {
    this.els.typing.hidden = !on;
    clearTimeout(this._shownTimer);
    if (on) this._shownTimer = setTimeout(() => { this.els.typing.hidden = true; }, TYPING_SHOWN_MS);
  }
}
