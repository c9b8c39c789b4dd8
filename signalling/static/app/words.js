// What the app says to people: error codes, end reasons and close codes in plain words.
// The codes are the protocol's (docs/protocol.md §5.4, §6, §7); the app never shows one alone.

const ERRORS = {
  callee_offline: "They are not online any more.",
  callee_busy: "They are in another call. Try again in a bit.",
  callee_away: "They are away right now.",
  self_call: "That is you.",
  already_in_call: "You are already in a call.",
  forbidden: "That is not something you can do here.",
  insufficient_balance: "You do not have enough coins for that.",
  unknown_gift: "That gift is not on sale any more.",
  blocked: "You cannot reach this person.",
  chat_blocked: "You cannot message this person.",
  chat_invalid_text: "That message cannot be sent (empty or too long).",
  rate_limited: "Slow down a little, then try again.",
  location_required: "Share your location or type one first.",
  match_pending: "A match is already being connected.",
  not_matched: "There is no match to skip.",
  call_not_found: "That call is already over.",
  invalid_state: "That call has moved on.",
  media_failed: "The video connection could not be set up.",
  unavailable: "Something on our side is busy. Try again in a moment.",
  not_connected: "You are offline. Reconnecting…",
  connection_lost: "The connection dropped. Reconnecting…",
  timeout: "The server did not answer in time.",
  banned: "This account has been suspended.",
};

/** A person-readable sentence for a JalwaError (or any error). */
export function problem(error) {
  return ERRORS[error?.code] || error?.message || "Something went wrong.";
}

/** The title and sentence for a call.ended, from my side of the call. */
export function ending(reason, { payer, peer }) {
  const them = peer || "They";
  switch (reason) {
    case "hangup": return ["Call ended", "Thanks for the call."];
    case "rejected": return payer ? ["Not now", `${them} could not take the call.`] : ["Declined", "You declined the call."];
    case "cancelled": return payer ? ["Cancelled", "You cancelled the call."] : ["Missed call", `${them} hung up before you answered.`];
    case "timeout": return ["No answer", payer ? `${them} did not answer.` : "You did not answer in time."];
    case "insufficient_balance":
      return ["Out of coins", payer ? "Your coins ran out, so the call ended." : `${them} ran out of coins.`];
    case "peer_lost": return ["Connection lost", `We lost the connection to ${them}.`];
    case "media_failed": return ["No video", "The video connection could not be set up, so nothing more was charged."];
    case "billing_unavailable": return ["Paused", "Billing is not reachable right now. Call again in a moment."];
    case "admin": return ["Call ended", "A moderator ended the call."];
    case "shutdown": return ["Call ended", "The server is restarting. Please call again."];
    default: return ["Call ended", ""];
  }
}

/** Why the connection closed for good (close codes after which the app does not retry). */
export function closed(code, reason) {
  if (code === 4003 || reason === "banned") return "This account has been suspended.";
  if (code === 4009) return "You signed in somewhere else. This tab is now offline.";
  if (code === 4001) return "Your sign-in has expired. Please pick a user again.";
  return "You are offline.";
}

export function coins(n) {
  return `${n} coin${n === 1 ? "" : "s"}`;
}

export function clock(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  const m = Math.floor(s / 60);
  return `${m}:${String(s % 60).padStart(2, "0")}`;
}
