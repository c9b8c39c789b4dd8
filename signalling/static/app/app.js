// jalwa's demo app (development mode): a paid 1:1 video-call product on jalwa.js.
// Plain ES modules, no build step. docs/demo-app.md says what it does and why.
import { JalwaClient } from "/jalwa.js";
import { ChatPanel } from "/app/chat.js";
import { clock, closed, coins, ending, problem } from "/app/words.js";

const $ = (id) => document.getElementById(id);
const SESSION = "jalwa.session";        // sessionStorage: this tab's sign-in, kept over a reload
const CALL_START = "jalwa.call.";  // sessionStorage: a call's start, rate, match, over a reload
const PRESETS = [
  { id: "asha", name: "Asha", role: "caller", coins: 500, note: "caller · adds 500 coins" },
  { id: "ravi", name: "Ravi", role: "caller", coins: 30, note: "caller · adds 30 coins (runs out fast)" },
  { id: "meera", name: "Meera", role: "host", coins: 0, note: "host · earns per minute" },
  { id: "kabir", name: "Kabir", role: "host", coins: 0, note: "host · earns per minute" },
];
const FINAL_SIGN_OUT = new Set([4001, 4003]);  // the sign-in itself is no good any more

// What the page shows; window.jalwaApp exposes it (and the client) to tests and devtools.
const state = {
  me: null,            // welcome.user
  wallet: null,        // bought coins
  earnings: null,      // a host's earned coins
  queue: null,         // {mode} while waiting for a match
  call: null,          // {id, peer, state, rang, matched, rate, minute, startedAt, lowLeft}
  ended: null,         // the last call.ended, as shown
  skipped: null,       // the call left with Next (its end starts the next match)
  media: null,         // the peer connection's state
  remoteFrames: 0,     // video frames rendered from the other side
  gifts: [],           // gifts received this session: {from, gift_id, coins}
  link: "offline",     // online | reconnecting | offline
  notices: [],         // every notice shown: {text, kind}
};
let client = null;
let media = null;
let chat = null;
let catalog = null;

// --- small helpers ----------------------------------------------------------------------

function toast(text, kind = "") {
  state.notices.push({ text, kind });
  const el = Object.assign(document.createElement("div"), { className: "toast " + kind, textContent: text });
  $("toasts").append(el);
  setTimeout(() => el.remove(), 5000);
}

/** Run an action from a button once at a time: a double click sends one request. */
async function once(button, action) {
  if (button.dataset.busy) return;
  button.dataset.busy = "1";
  button.disabled = true;
  try {
    return await action();
  } catch (e) {
    toast(problem(e), "bad");
  } finally {
    delete button.dataset.busy;
    button.disabled = false;
    render();
  }
}

function show(screen) {
  for (const id of ["signin", "lobby", "call"]) $(id).hidden = id !== screen;
}

function payer() { return state.me?.role === "caller"; }

function where(latId, lonId) {
  const lat = Number($(latId).value), lon = Number($(lonId).value);
  if (!Number.isFinite(lat) || !Number.isFinite(lon) || $(latId).value === "" || $(lonId).value === "") return null;
  return { lat, lon };
}

function locate(latId, lonId) {
  if (!navigator.geolocation) { toast("This browser cannot share a location: type one."); return; }
  navigator.geolocation.getCurrentPosition(
    (p) => { $(latId).value = p.coords.latitude.toFixed(4); $(lonId).value = p.coords.longitude.toFixed(4); },
    () => toast("Location not shared: type one instead."),
    { timeout: 8000 },
  );
}

// --- rendering --------------------------------------------------------------------------

function render() {
  const call = state.call;
  $("me").hidden = !state.me;
  if (state.me) {
    $("meName").textContent = state.me.name;
    $("coins").textContent = state.wallet == null ? "…" : coins(state.wallet);
    $("coins").hidden = !payer();
    $("earnings").hidden = payer();
    $("earnings").textContent = state.earnings == null ? "…" : `earned ${coins(state.earnings)}`;
    $("link").className = "link " + { online: "up", reconnecting: "", offline: "down" }[state.link];
    $("link").title = state.link;
  }
  $("callerLobby").hidden = !payer();
  $("hostLobby").hidden = !state.me || payer();
  const inCall = !!call;
  $("matchRandom").disabled = inCall || !!$("matchRandom").dataset.busy;
  $("matchNearby").disabled = inCall || !!$("matchNearby").dataset.busy;
  $("queue").hidden = !state.queue || inCall;
  // ringing both ways
  const ringing = call?.state === "ringing";
  $("ringing").hidden = !ringing;
  if (ringing) {
    const name = call.peer?.name || call.peer?.id || "a host";
    const away = call.distanceKm != null ? ` (${call.distanceKm} km away)` : "";
    $("ringText").textContent = call.rang ? `Calling ${name}${away}…` : `${name} is calling${call.matched ? " (a match)" : ""}`;
    $("acceptCall").hidden = $("declineCall").hidden = call.rang;
    $("cancelCall").hidden = !call.rang;
  }
  if (call?.state === "active") {
    show("call");
    $("peerName").textContent = call.peer?.name || call.peer?.id || "";
    const parts = [];
    if (call.rate != null) parts.push(`${call.rate}/min`);
    if (payer() && call.minute) parts.push(`minute ${call.minute}`);
    if (payer() && state.wallet != null) parts.push(coins(state.wallet) + " left");
    if (!payer() && state.earnings != null) parts.push(`earned ${coins(state.earnings)}`);
    $("callFigures").textContent = parts.join(" · ");
    $("lowBalance").hidden = !(payer() && call.lowLeft != null);
    $("lowBalance").textContent = call.lowLeft === 0 ? "This is your last minute: your coins run out when it ends."
      : `Only ${call.lowLeft} more minute${call.lowLeft === 1 ? "" : "s"} of coins left.`;
    $("giftButton").hidden = !payer();
    $("nextButton").hidden = !(payer() && call.matched);
    $("mediaNote").hidden = state.media === "connected" || state.media == null;
    $("mediaNote").textContent = { new: "Connecting video…", connecting: "Connecting video…",
      disconnected: "Video interrupted, reconnecting…", failed: "Video failed." }[state.media] || "";
  } else if (state.me) {
    show("lobby");
  }
}

function tickTimer() {
  const call = state.call;
  if (call?.state === "active" && call.startedAt) $("timer").textContent = clock((Date.now() - call.startedAt) / 1000);
}

async function refreshWallet() {
  try {
    const w = await client.wallet();
    state.wallet = w.wallet;
    state.earnings = w.earnings;
  } catch (e) { /* shown as "…"; the next event fills it in */ }
  render();
}

async function refreshHosts() {
  if (!payer()) return;
  let hosts = [];
  try { hosts = (await client.hosts()).hosts; } catch (e) { toast(problem(e), "bad"); }
  const ul = $("hosts");
  ul.textContent = "";
  for (const h of hosts) {
    const li = document.createElement("li");
    li.dataset.user = h.id;
    const who = Object.assign(document.createElement("span"), { className: "who" });
    who.append(Object.assign(document.createElement("b"), { textContent: h.name }), " ",
      Object.assign(document.createElement("span"), { className: "rate", textContent: `${h.rate} coins/min` }));
    const button = Object.assign(document.createElement("button"), { className: "primary", textContent: "Call", type: "button" });
    button.addEventListener("click", () => once(button, () => invite(h)));
    li.append(Object.assign(document.createElement("span"), { className: "dot" }), who, button);
    ul.append(li);
  }
  $("noHosts").hidden = hosts.length > 0;
  if (hosts.length) client.watch(hosts.map((h) => h.id)).catch(() => {});
}

async function refreshRecent() {
  let calls = [];
  try { calls = (await client.calls()).calls.slice(0, 5); } catch (e) { return; }
  const ul = $("recent");
  ul.textContent = "";
  for (const c of calls) {
    const other = c.payer === state.me.id ? c.host : c.payer;
    const [title] = ending(c.end_reason, { payer: c.payer === state.me.id, peer: other });
    const li = document.createElement("li");
    li.textContent = `${other} · ${c.minutes} min · ${coins(c.coins)} · ${title.toLowerCase()}`;
    li.append(Object.assign(document.createElement("span"), {
      className: "when", textContent: new Date(c.started_at * 1000).toLocaleTimeString() }));
    ul.append(li);
  }
  if (!calls.length) ul.append(Object.assign(document.createElement("li"), { className: "muted", textContent: "No calls yet." }));
}

// --- actions ----------------------------------------------------------------------------

async function invite(host) {
  const ack = await client.invite(host.id);
  state.call = { id: ack.call_id, peer: { id: host.id, name: host.name }, state: "ringing", rang: true, rate: host.rate };
  render();
}

/** One answer per call: a second click (the first already answered) sends nothing, and a
 *  call that ended meanwhile is what hanging up wanted anyway. */
async function act(action) {
  const call = state.call;
  if (!call || call.acted === action) return;
  call.acted = action;
  try {
    await client[action](call.id);
  } catch (e) {
    if (e.code === "call_not_found" && action !== "accept") return;
    call.acted = null;
    throw e;
  }
}

async function match(mode) {
  state.ended = null;
  if (mode === "nearby") {
    const loc = where("lat", "lon");
    if (!loc) throw Object.assign(new Error("no location"), { code: "location_required" });
    await client.matchNearby(loc);
  } else {
    await client.matchRandom();
  }
  if (!state.call) state.queue = { mode };
  $("queueText").textContent = mode === "nearby" ? "Looking for a host near you…" : "Looking for a host…";
}

async function offerMyself() {
  if (payer() || !client?.connected) return;
  const nearby = $("poolNearby").checked;
  const loc = where("hostLat", "hostLon");
  const status = $("status").value;
  await client.setStatus(status, {
    ...(loc ? { location: loc } : {}),
    match: { random: $("poolRandom").checked, nearby: nearby && !!loc, auto_accept: $("autoAccept").checked },
  });
  $("hostState").textContent = status !== "available" ? "You are away: nobody can call you."
    : $("poolRandom").checked || nearby ? "You are in the queue: callers can match with you." : "Callers can call you from the list.";
}

async function openGifts() {
  if (!catalog) catalog = (await client.gifts()).gifts;
  const ul = $("giftList");
  ul.textContent = "";
  for (const g of catalog) {
    const button = Object.assign(document.createElement("button"), { type: "button" });
    button.dataset.gift = g.gift_id;
    button.append(Object.assign(document.createElement("b"), { textContent: g.name }),
      Object.assign(document.createElement("span"), { className: "price", textContent: coins(g.price) }));
    button.addEventListener("click", () => once(button, () => sendGift(g)));
    const li = document.createElement("li");
    li.append(button);
    ul.append(li);
  }
  if (!catalog.length) ul.append(Object.assign(document.createElement("li"), { className: "muted", textContent: "No gifts on sale." }));
  $("gifts").hidden = false;
}

async function sendGift(gift) {
  const call = state.call;
  if (!call) return;
  const ack = await client.sendGift(call.peer.id, gift.gift_id, call.id);
  state.wallet = ack.balance;
  $("gifts").hidden = true;
  toast(`You sent ${gift.name} to ${call.peer.name || call.peer.id}.`, "good");
}

// --- the session ------------------------------------------------------------------------

function connect(session) {
  client = new JalwaClient({ token: session.token });
  window.jalwaApp.client = client;
  media = client.media({
    onRemoteStream: (stream) => { const v = $("remoteVideo"); v.srcObject = stream; v.play().catch(() => { v.muted = true; v.play().catch(() => {}); }); },
    onLocalStream: (stream) => { $("localVideo").srcObject = stream; },
    onState: (s) => {
      state.media = s === "closed" ? null : s;
      if (s === "closed") { $("remoteVideo").srcObject = null; $("localVideo").srcObject = null; }
      render();
    },
    onError: (e) => toast(problem(e), "bad"),
  });
  window.jalwaApp.media = media;
  chat = new ChatPanel(client, {
    list: $("messages"), form: $("chatForm"), input: $("chatText"), typing: $("typing"),
    peer: $("chatPeer"), older: $("olderChat"),
  }, { onNotice: toast });
  on();
  // A refused or dropped first connection is told by the "close" handler (and retried
  // when retrying can help).
  client.connect().catch(() => {});
}

function on() {
  client.on("open", (w) => {
    state.link = "online";
    state.me = w.user;
    if (w.resumed) { render(); return; }
    state.queue = null;
    state.call = null;
    if (w.call) {
      const kept = JSON.parse(sessionStorage.getItem(CALL_START + w.call.call_id) || "{}");
      state.call = { id: w.call.call_id, peer: w.call.peer, state: w.call.state, rang: w.call.role === "caller",
        startedAt: kept.startedAt || Date.now(), rate: kept.rate, matched: kept.matched };
      if (w.call.state === "active") chat.open(w.call.peer);
    }
    refreshWallet();
    refreshRecent();
    if (payer()) refreshHosts(); else offerMyself().catch((e) => toast(problem(e), "bad"));
    render();
  });
  client.on("close", (e) => {
    state.link = e.final ? "offline" : "reconnecting";
    if (e.final && e.code !== 1000) toast(closed(e.code, e.reason), "bad");
    if (e.final && FINAL_SIGN_OUT.has(e.code)) signOut();
    render();
  });
  client.on("reconnecting", () => { state.link = "reconnecting"; render(); });
  client.on("error", (m) => { if (!m.id && m.code === "resync_required") refreshWallet(); });
  client.on("wallet.balance", (m) => { state.wallet = m.wallet; if (m.earnings != null) state.earnings = m.earnings; render(); });
  client.on("presence.changed", (m) => {
    if (payer() && m.status !== "available") document.querySelector(`#hosts li[data-user="${CSS.escape(m.user_id)}"]`)?.remove();
  });
  client.on("match.queued", (m) => { state.queue = { mode: m.mode }; render(); });
  client.on("match.found", (m) => {
    state.queue = null;
    state.call = { id: m.call_id, peer: { id: m.peer.id, name: m.peer.name }, state: "ringing", rang: true,
      matched: true, rate: m.peer.rate, distanceKm: m.peer.distance_km };
    render();
  });
  client.on("match.timeout", () => { state.queue = null; toast("Nobody is free right now. Try again in a minute."); render(); });
  client.on("call.ringing", (m) => {
    const known = state.call?.id === m.call_id ? state.call : {};
    state.call = { ...known, id: m.call_id, peer: { ...known.peer, ...m.callee }, state: "ringing", rang: true };
    render();
  });
  client.on("call.incoming", (m) => {
    state.call = { id: m.call_id, peer: m.caller, state: "ringing", rang: false, matched: !!m.match };
    render();
  });
  client.on("call.started", (m) => {
    const known = state.call?.id === m.call_id ? state.call : { id: m.call_id, rang: false };
    const startedAt = Date.now();
    sessionStorage.setItem(CALL_START + m.call_id, JSON.stringify({ startedAt, rate: m.rate, matched: !!known.matched }));
    state.call = { ...known, peer: m.peer, state: "active", rate: m.rate, minute: 1, startedAt, lowLeft: null };
    if (payer() && m.balance != null) state.wallet = m.balance;
    state.queue = null;
    state.remoteFrames = 0;
    chat.open(state.call.peer);
    render();
  });
  client.on("billing.tick", (m) => {
    if (state.call?.id === m.call_id) state.call.minute = m.minute;
    state.wallet = m.balance;
    render();
  });
  client.on("billing.low_balance", (m) => { if (state.call?.id === m.call_id) { state.call.lowLeft = m.minutes_left; render(); } });
  client.on("gift.received", async (m) => {
    state.gifts.push({ from: m.from.id, gift_id: m.gift_id, coins: m.coins });
    if (!catalog) catalog = await client.gifts().then((r) => r.gifts, () => null);
    const gift = catalog?.find((g) => g.gift_id === m.gift_id);
    toast(`${m.from.name} sent you ${gift ? "a " + gift.name : "a gift"}: +${coins(m.coins)}`, "good");
    refreshWallet();
  });
  client.on("call.ended", (m) => {
    if (state.call && state.call.id !== m.call_id) return;
    const call = state.call || { peer: {} };
    sessionStorage.removeItem(CALL_START + m.call_id);
    state.ended = { ...m, peer: call.peer };
    state.call = null;
    chat.close();
    $("gifts").hidden = true;
    const [title, text] = ending(m.reason, { payer: payer(), peer: call.peer?.name || call.peer?.id });
    // A ringing call that simply did not happen, or one skipped with Next, needs a toast.
    if (m.call_id === state.skipped) {
      toast(`${m.minutes} min · ${coins(m.coins)}. Finding the next host…`);
      state.queue = { mode: "random" };
    } else if (m.minutes === 0 && ["rejected", "cancelled", "timeout"].includes(m.reason)) {
      if (!(m.reason === "cancelled" && call.rang)) toast(text);
    } else {
      $("summaryTitle").textContent = title;
      $("summaryText").textContent = text;
      $("summaryFigures").textContent = `${m.minutes} min · ${coins(m.coins)}${payer() ? " paid" : " from this call"}`;
      $("summary").hidden = false;
      $("summary").dataset.reason = m.reason;
    }
    refreshWallet();
    refreshRecent();
    if (payer()) refreshHosts();
    render();
  });
}

function signOut() {
  sessionStorage.removeItem(SESSION);
  if (client) client.close();
  media?.detach();
  location.reload();
}

async function signIn(user) {
  const q = new URLSearchParams({ user: user.id, role: user.role, name: user.name || user.id, credit: String(user.coins || 0) });
  const resp = await fetch("/v1/dev/token?" + q);
  if (!resp.ok) throw new Error(await resp.text());
  const session = { token: (await resp.json()).token, user };
  sessionStorage.setItem(SESSION, JSON.stringify(session));
  connect(session);
}

// --- wiring -----------------------------------------------------------------------------

window.jalwaApp = { state, client: null, media: null };

for (const p of PRESETS) {
  const button = Object.assign(document.createElement("button"), { type: "button", className: "preset " + p.role });
  button.dataset.user = p.id;
  button.append(Object.assign(document.createElement("b"), { textContent: p.name }),
    Object.assign(document.createElement("span"), { textContent: p.note }));
  button.addEventListener("click", () => once(button, () => signIn(p)));
  $("presets").append(button);
}
$("customForm").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const button = ev.target.querySelector("button");
  once(button, () => signIn({ id: $("customId").value.trim(), name: $("customName").value.trim(),
    role: $("customRole").value, coins: Number($("customCoins").value) || 0 }));
});
$("signOut").addEventListener("click", signOut);
$("matchRandom").addEventListener("click", (ev) => once(ev.currentTarget, () => match("random")));
$("matchNearby").addEventListener("click", (ev) => once(ev.currentTarget, () => match("nearby")));
$("cancelMatch").addEventListener("click", (ev) => once(ev.currentTarget, async () => { await client.cancelMatch(); state.queue = null; }));
$("useLocation").addEventListener("click", () => locate("lat", "lon"));
$("hostUseLocation").addEventListener("click", () => locate("hostLat", "hostLon"));
$("refreshHosts").addEventListener("click", (ev) => once(ev.currentTarget, refreshHosts));
for (const id of ["poolRandom", "poolNearby", "autoAccept", "status", "hostLat", "hostLon"]) {
  $(id).addEventListener("change", () => offerMyself().catch((e) => toast(problem(e), "bad")));
}
$("acceptCall").addEventListener("click", (ev) => once(ev.currentTarget, () => act("accept")));
$("declineCall").addEventListener("click", (ev) => once(ev.currentTarget, () => act("reject")));
$("cancelCall").addEventListener("click", (ev) => once(ev.currentTarget, () => act("cancel")));
$("hangUp").addEventListener("click", (ev) => once(ev.currentTarget, () => act("hangUp")));
$("nextButton").addEventListener("click", (ev) => once(ev.currentTarget, async () => {
  state.skipped = state.call?.id;  // its end is a step to the next match, not a summary
  await client.request("match.next");
}));
$("giftButton").addEventListener("click", (ev) => once(ev.currentTarget, openGifts));
$("closeGifts").addEventListener("click", () => { $("gifts").hidden = true; });
$("closeSummary").addEventListener("click", () => { $("summary").hidden = true; });
$("toggleMic").addEventListener("click", (ev) => toggle(ev.currentTarget, "audio", "Mic"));
$("toggleCam").addEventListener("click", (ev) => toggle(ev.currentTarget, "video", "Camera"));
$("remoteVideo").addEventListener("click", (ev) => { ev.target.muted = false; });

function toggle(button, kind, label) {
  const enabled = !button.classList.toggle("off");
  media?.setEnabled(kind, enabled);
  button.textContent = `${label} ${enabled ? "on" : "off"}`;
}

// Frames rendered from the other side: proof the remote video plays, not just that it is set.
(function countFrames() {
  const v = $("remoteVideo");
  if (!("requestVideoFrameCallback" in v)) return;
  const cb = () => { if (v.srcObject) state.remoteFrames += 1; v.requestVideoFrameCallback(cb); };
  v.requestVideoFrameCallback(cb);
})();
setInterval(tickTimer, 1000);
// Hosts come and go: keep the list fresh while the caller looks at it; hosts' earnings too.
setInterval(() => {
  if (!client?.connected) return;
  if (payer() && !state.call) refreshHosts();
  if (!payer() && state.call?.state === "active") refreshWallet();
}, 10000);

const saved = JSON.parse(sessionStorage.getItem(SESSION) || "null");
if (saved?.token) connect(saved); else show("signin");
render();
