"""docs/protocol.md and docs/protocol.schema.json, generated from the schemas in protocol.py.

Prose lives here as constants; every table of fields, codes and limits is derived from
``signalling.protocol`` and ``HubSettings``, and each message or enum lands in the section
its docstring names (``§5.1 ...``). ``python -m signalling.protocol_doc`` rewrites both files;
tests/unit/test_protocol_doc.py fails while they are stale.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from string import Template
from typing import Any

import msgspec
import msgspec.inspect as mi

from media.settings import MediaSettings

from . import protocol as p
from .settings import HubSettings
from .ws import TRY_AGAIN_LATER

REPO_ROOT = Path(__file__).resolve().parent.parent
DOC_PATH = REPO_ROOT / "docs" / "protocol.md"
SCHEMA_PATH = REPO_ROOT / "docs" / "protocol.schema.json"
REGENERATE = "python -m signalling.protocol_doc"

# --- meanings: every enum member must have one, or render() raises -----------------------

ERROR_MEANINGS: dict[p.ErrorCode, str] = {
    p.ErrorCode.BAD_JSON: "The frame is not JSON, or not a JSON object.",
    p.ErrorCode.UNKNOWN_TYPE: "`type` names no client message.",
    p.ErrorCode.INVALID_MESSAGE: (
        "`type` is missing or not a string, or a field is missing, mistyped or breaks a "
        "constraint; `message` names the field (`$.to`)."
    ),
    p.ErrorCode.FRAME_TOO_LARGE: "Text frame longer than `max_frame_bytes`; it was not read.",
    p.ErrorCode.BINARY_NOT_SUPPORTED: "Binary frame; send JSON in text frames.",
    p.ErrorCode.RATE_LIMITED: "Over the rate limit; the frame was dropped, not handled (§6).",
    p.ErrorCode.CALL_NOT_FOUND: (
        "No such call, the call has ended, or you are not one of its parties."
    ),
    p.ErrorCode.INVALID_STATE: (
        "The call is not in the state the action needs; `message` names the state."
    ),
    p.ErrorCode.CALLEE_OFFLINE: "The callee has no session.",
    p.ErrorCode.CALLEE_BUSY: "The callee is in a call or has chosen `busy`.",
    p.ErrorCode.CALLEE_AWAY: "The callee has chosen `away`.",
    p.ErrorCode.CALLEE_UNREACHABLE: (
        "The callee is connected to another hub node; cross-node calls are not supported yet."
    ),
    p.ErrorCode.SELF_CALL: "You invited yourself.",
    p.ErrorCode.ALREADY_IN_CALL: "You are already in a ringing or active call.",
    p.ErrorCode.FORBIDDEN: (
        "Not yours to do: a call that is not between a caller and a host, or an action "
        "reserved for the other party (§5.2)."
    ),
    p.ErrorCode.TOO_MANY_WATCHES: "The watch would exceed `presence_watch_max` users (§4.2).",
    p.ErrorCode.INSUFFICIENT_BALANCE: (
        "The payer cannot pay one minute of the call (at `call.invite`), or the sender's "
        "wallet cannot pay for the gift."
    ),
    p.ErrorCode.UNKNOWN_GIFT: "No such gift in the catalog, or it is not on sale (§5.7).",
    p.ErrorCode.INVALID_AMOUNT: "An amount that is zero, negative or too large.",
    p.ErrorCode.IDEMPOTENCY_CONFLICT: (
        "The `idempotency_key` was used before for a different request."
    ),
    p.ErrorCode.BLOCKED: "One of the two users blocked the other: no calls between them (§9.5).",
    p.ErrorCode.CHAT_INVALID: "A malformed chat request: a message to yourself, a bad cursor.",
    p.ErrorCode.CHAT_INVALID_TEXT: (
        "Text empty, longer than the limit, or with control characters other than newline "
        "and tab (§9.1)."
    ),
    p.ErrorCode.CHAT_FORBIDDEN: "You are not a participant of that conversation.",
    p.ErrorCode.CHAT_BLOCKED: "One of the two users blocked the other (§9.5).",
    p.ErrorCode.CHAT_NOT_FOUND: "No such conversation id.",
    p.ErrorCode.MEDIA_FAILED: (
        "The SFU could not use the offer or candidate (bad SDP, no common codec) (§5.5)."
    ),
    p.ErrorCode.UNAVAILABLE: (
        "A backing store failed while handling the message; try again shortly."
    ),
    p.ErrorCode.INTERNAL: "Unexpected server fault (reserved; not sent by this version).",
}

END_REASON_MEANINGS: dict[p.EndReason, str] = {
    p.EndReason.HANGUP: "A party sent `call.end` during the active call.",
    p.EndReason.REJECTED: "The callee declined the ringing call (`call.reject` or `call.end`).",
    p.EndReason.CANCELLED: "The caller withdrew the ringing call (`call.cancel` or `call.end`).",
    p.EndReason.TIMEOUT: "Nobody answered within `ring_timeout_s`.",
    p.EndReason.INSUFFICIENT_BALANCE: (
        "Billing ended it: the payer cannot pay the first or the next minute."
    ),
    p.EndReason.PEER_LOST: "A party was disconnected longer than `peer_lost_grace_s`.",
    p.EndReason.MEDIA_FAILED: (
        "In `sfu` mode a party's peer connection with the server was not connected within "
        "`media.connect_timeout_s` of the call's start, its offer or its failing (§5.5)."
    ),
    p.EndReason.ADMIN: "An operator ended it.",
    p.EndReason.SHUTDOWN: "The server is shutting down (a 1012 close follows).",
}

# code -> (reason text sent with the close frame, meaning and what the client should do)
CLOSE_MEANINGS: dict[int, tuple[str, str]] = {
    p.CloseCode.NORMAL: ("", "Normal end, in reply to the client's own close."),
    p.CloseCode.MESSAGE_TOO_BIG: (
        "",
        "A frame was larger than `hard_frame_bytes`; aiohttp closes without handling it.",
    ),
    p.CloseCode.SERVICE_RESTART: (
        "server restarting, reconnect",
        "The server is shutting down; calls have ended (`shutdown`). Reconnect after a short "
        "random delay.",
    ),
    TRY_AGAIN_LATER: (
        "try again later",
        "The hub could not register the session (store failure). Reconnect with backoff.",
    ),
    p.CloseCode.BAD_TOKEN: (
        "token_missing, token_invalid or token_expired",
        "The token was refused (§1). Get a new token; do not retry with the same one.",
    ),
    p.CloseCode.FORBIDDEN: ("", "Reserved for refused access; not sent by this version."),
    p.CloseCode.POLICY: (
        "rate limit exceeded; too many connections from your address; connecting too often"
        " from your address; reconnecting too often",
        "Flooding (§6), or a connection limit (§6): back off before reconnecting. A client"
        " dropped for reading too slowly sees the connection cut (1006), not this code.",
    ),
    p.CloseCode.REPLACED: (
        "replaced by a newer session",
        "The same user connected again (§1). Do not reconnect automatically.",
    ),
}

OBJECT_MEANINGS: dict[str, str] = {
    "Location": "Where the user is, in degrees (WGS 84).",
    "UserInfo": "A user as others see them.",
    "IceServerInfo": "One entry for `RTCPeerConnection`'s `iceServers`.",
    "CallInfo": "The call a user is already in when a session starts (§3).",
    "ChatMessage": "A stored chat message (§9).",
}

# (Struct name, JSON field name) -> note for what the schema types cannot say; a key that
# names no field makes render() raise.
FIELD_NOTES: dict[tuple[str, str], str] = {
    ("UserInfo", "id"): "user id (the token's `sub`)",
    ("UserInfo", "role"): "`caller`, `host` or `admin`",
    ("CallInfo", "state"): "`ringing` or `active`",
    ("CallInfo", "role"): "your side of the call",
    ("Welcome", "heartbeat_s"): "seconds (§1)",
    ("Welcome", "media"): "`sfu` or `p2p` (§5.5)",
    ("Ack", "call_id"): "after `call.invite`",
    ("Ack", "presence"): "after `presence.watch`: user id to shown status",
    ("Error", "code"): "an error code (§6)",
    ("Error", "message"): "for people; wording may change",
    ("CallIncoming", "record"): "the caller asked to record",
    ("CallStarted", "media"): "`sfu` or `p2p` (§5.5)",
    ("CallStarted", "rate"): "coins per minute",
    ("CallStarted", "balance"): "the payer's coins; in the payer's copy only",
    ("CallStarted", "record"): "both parties asked to record",
    ("CallEnded", "reason"): "an end reason (§5.4)",
    ("CallEnded", "minutes"): "minutes billed",
    ("CallEnded", "coins"): "coins charged",
    ("RtcOfferOut", "from"): "the sender's user id",
    ("RtcAnswerOut", "from"): "the sender's user id",
    ("RtcIceOut", "from"): "the sender's user id",
    ("RtcIceOut", "candidate"): "absent: end of candidates",
    ("CallInvite", "record"): "ask to record the call",
    ("CallAccept", "record"): "consent to record, if the caller asked",
    ("RtcIce", "candidate"): "`null` or absent: end of candidates",
    ("Ack", "balance"): "after `gift.send`: your wallet's coins",
    ("Ack", "entry_id"): "after `gift.send`: the gift's ledger entry, the same on a retry",
    ("BillingTick", "minute"): "1-based minute of the call just paid",
    ("BillingTick", "charged"): "coins charged for it",
    ("BillingTick", "balance"): "your wallet after the charge",
    ("BillingLowBalance", "minutes_left"): "whole minutes your wallet still pays for",
    ("WalletBalance", "wallet"): "bought coins",
    ("WalletBalance", "earnings"): "earned coins (withdrawable); absent when not known",
    ("GiftReceived", "from"): "the sender",
    ("GiftReceived", "coins"): "what the gift added to your earnings (your share)",
    ("GiftReceived", "entry_id"): "the gift's ledger entry: one gift, one entry, one frame",
    ("GiftSend", "idempotency_key"): "a retry with the same key changes nothing",
    ("GiftSend", "call_id"): "the call the gift is sent in, if any",
    ("Ack", "message"): "after `chat.send`: the stored message (the original, for a retry)",
    ("Ack", "messages"): "after `chat.history`: the page, newest first",
    ("Ack", "next_before"): "after `chat.history`: cursor of the next page; absent at the end",
    ("ChatMessage", "from"): "the sender's user id",
    ("ChatMessage", "created_at"): "unix seconds",
    ("ChatMessage", "id"): "sortable by creation; unique",
    ("ChatReceipt", "by"): "the receiver who delivered or read them",
    ("ChatTypingOut", "from"): "who is typing",
    ("ChatHistory", "before"): "`next_before` of the previous page",
}

HIDDEN_SETTINGS = frozenset({"demo_page"})  # not part of the protocol

# --- prose ---------------------------------------------------------------------------------
# ``$name`` is a HubSettings default or a CloseCode value; literal dollars are written $$.

INTRO = """\
# Jalwa signalling protocol v1

<!-- Generated by `python -m signalling.protocol_doc` from signalling/protocol.py and
signalling/protocol_doc.py; edit those, not this file. -->

The WebSocket protocol between apps and the jalwa signalling hub: presence, one-to-one call
set-up between a *caller* and a *host*, and the SDP/ICE relay. The message tables are
generated from the msgspec schemas in `signalling/protocol.py`, and
[`protocol.schema.json`](protocol.schema.json) is a JSON Schema of every message. Code
comments cite sections of this document as §N.

Defaults quoted here are those of `HubSettings` (`signalling/settings.py`); deployments can
change them (§6)."""

S1 = """\
Open a WebSocket to `GET /v1/ws?token=<JWT>`. A client that can set headers may send
`Authorization: Bearer <JWT>` instead; the query parameter wins when both are present.

The token is checked with the one algorithm the deployment pins (`HS256`, `RS256` or
`ES256`). It must carry `exp`, `sub` (the user id: 1 to 64 of `A-Z a-z 0-9 _ . @ : -`) and
`role` (`caller`, `host` or `admin`), may carry `name` (printable, at most 64 characters;
the user id when absent), and must carry `aud` and `iss` when the deployment sets them.

The server always completes the upgrade and then checks the token, because browsers cannot
read the status of a refused upgrade: a bad token closes the socket at once with
**$BAD_TOKEN** and reason `token_missing`, `token_invalid` or `token_expired`. If the hub
cannot register the session (a presence store failure) it closes with **$TRY_AGAIN_LATER**.
Otherwise the first frame is `welcome` (§3).

A user has one session at a time. A new connection for the same user closes the older one
with **$REPLACED**; the older session's watches (§4.2) end, and the user's call, if any,
carries over to the new session (§3).

**Heartbeat.** The server sends a WebSocket ping every `heartbeat_s` (default
$heartbeat_s s, also sent in `welcome`; the timer restarts whenever a frame arrives) and
drops the connection without a close frame (clients see 1006) if no pong arrives within
half that time. Clients must answer pings; browsers do so automatically. There is no
application-level ping.

When the connection goes away the user becomes `offline` (§4) and a call they are in waits
for them for `peer_lost_grace_s` (§5.4)."""

S2 = """\
Every frame is a JSON object in a WebSocket **text** frame, with a string `type` naming
the message. The server ignores fields it does not know (newer clients may send more), but
a known field that is missing, mistyped or out of range makes the message invalid. Each
frame is handled completely, in order, before the next is read.

- A binary frame gets error `binary_not_supported`.
- A text frame of more than `max_frame_bytes` bytes of UTF-8 (default $max_frame_bytes)
  gets `frame_too_large` and is not handled; one of exactly that size is handled.
- A frame of more than `hard_frame_bytes` bytes (default $hard_frame_bytes) closes the
  connection with **$MESSAGE_TOO_BIG** (§7); one of exactly that size gets
  `frame_too_large`.
- Not a JSON object: `bad_json`. `type` missing or not a string: `invalid_message`. Unknown
  `type`: `unknown_type`. A bad field: `invalid_message`, naming the field. A string with a
  lone surrogate escape (`"\\ud800"`, not valid Unicode) and a frame nested too deeply for
  the decoder (about a thousand levels) are `invalid_message` too.

**Ids, acks and errors.** A client message may carry `id`, a string of at most 64
characters chosen by the client. Every client message that carries an `id` gets exactly one
reply: `ack` or `error`, with that `id`. Messages without `id` get no ack but still get
errors (without `id`). The server does not check that ids are unique; reusing one only
makes replies ambiguous. Precisely:

- an `error` echoes the `id` only when it could be read: the frame is a JSON object whose
  `id` is a string of at most 64 characters (valid Unicode), at the top level. This holds
  for `frame_too_large`, `binary_not_supported` and `rate_limited` too;
- the frame that trips the flood limit gets no reply: the connection closes (§6);
- the reply comes before the call events its message causes: the `ack` of `call.invite`,
  with the new `call_id`, arrives before `call.ringing` (§8);
- an `ack` carries only `id`, except after `call.invite` (`call_id`) and `presence.watch`
  (`presence`).

**Server frames omit fields that hold their default** (`null`, `false`, `0`): read a missing
field as its default. The tables say *omitted when* for such fields."""

S2_1 = """\
Objects that appear inside messages."""

S3 = """\
`welcome` is the first frame of every session. `user` is the identity from the token;
`heartbeat_s` is the ping interval (§1); `ice_servers` are the STUN/TURN servers to give
`RTCPeerConnection` (possibly none); `media` says how call media flows, and is always `p2p`
in this version (§5.5).

`call` is present when the user is already in a ringing or active call: they reconnected
within the grace period (§5.4) or replaced an older session (§1). With an active call in
`p2p` mode, start a new offer: frames the peer sent meanwhile were dropped (§5.5).

After `welcome` the user's status is `available` (`busy` while in a call) and their
watchers are told (§4); send `presence.update` to choose another."""

S4 = """\
Each user has a status they choose, `available`, `busy` or `away`, and a *shown* status,
the one others see: `busy` while the user is in a call (ringing or active), `offline` while
they have no session, otherwise the chosen one. Every new session starts `available`. The
shown status decides whether a user can be called (§5.1)."""

S4_1 = """\
`presence.update` sets the chosen status and, optionally, the user's location (kept for
matching users; never sent to other users)."""

S4_2 = """\
`presence.watch` subscribes this session to users' shown status. The `ack` carries
`presence`, the shown status of every user in the request, so send it with an `id`; after
that, `presence.changed` arrives whenever one of them changes, including `offline` when
their session ends or their hub node stops. A session watches at most `presence_watch_max`
distinct users (default $presence_watch_max); a watch that would exceed it is refused whole
with `too_many_watches`. `presence.unwatch` ends watches; users not watched are ignored.
Watches belong to the session and end with it.

With several hub nodes, changes are pushed only for users connected to the watcher's own
node (plus `offline` for the users of a node that crashed); the `ack` snapshot is read from
the shared presence store and covers every node."""

S5 = """\
A call joins one `caller` and one `host` (the `role` in their tokens); either may ring the
other, and the party with role `caller` pays. Admins take no part in calls. A user is in at
most one ringing or active call. `call_id` is an opaque string chosen by the server.

A message about a call that does not exist, has ended or is not yours gets `call_not_found`;
the three cases get the same error so call ids cannot be probed. An action the call's state
does not allow gets `invalid_state`, naming the state. An ended call is forgotten at once."""

STATE_DIAGRAM = """\
```text
        call.invite
             |
             v
        +---------+  call.reject, call.cancel, call.end,    +-------+
        | ringing |---------------------------------------->| ended |
        +---------+  timeout, peer lost, admin, shutdown    +-------+
             |                                                  ^
 call.accept |                                                  |
             v                                                  |
        +--------+  call.end, peer lost, insufficient_balance,  |
        | active |----------------------------------------------+
        +--------+  admin, shutdown
```"""

S5_1 = """\
`call.invite` rings the user `to`. It is refused with the first of these that applies:

1. `to` has no session and no call: `callee_unreachable` if they are connected to another
   hub node (cross-node calls are not supported yet), otherwise `callee_offline`;
2. `to` is yourself: `self_call`;
3. the two of you are not one caller and one host: `forbidden`;
4. you are already in a call: `already_in_call`;
5. `to` is in a call (including one waiting for them to reconnect) or shown `busy`:
   `callee_busy`;
6. `to` is `away`: `callee_away`.

Otherwise both of you are shown `busy`, the `ack` carries the new `call_id`, the callee
gets `call.incoming` and you get `call.ringing` (which carries the `call_id` too, for an
invite sent without `id`). A call nobody answers ends after `ring_timeout_s` (default
$ring_timeout_s s) with reason `timeout`.

`record: true` asks for the call to be recorded; it is recorded only if the callee also
accepts with `record: true`. `call.incoming` shows the request, `call.started` the outcome."""

S5_2 = """\
Only the callee may `call.accept` or `call.reject`, and only the caller may `call.cancel`;
the other party gets `forbidden`. All three need a ringing call (`invalid_state` otherwise).

- `call.accept` makes the call active. Billing then sets its terms and both parties get
  `call.started`: `rate` is the price in coins per minute and `balance` the payer's coins,
  in the payer's copy only (a hub without billing sends rate 0 and no balance). If
  billing refuses the call (for example the payer cannot pay a minute), it ends at once
  with that reason and
  `call.ended` comes instead of `call.started`; the accept is acked either way.
- `call.reject` ends the call with reason `rejected`; `call.cancel` with `cancelled`."""

S5_3 = """\
`call.end` ends a call for either party. While the call is ringing it counts as
`call.cancel` from the caller or `call.reject` from the callee (reason `cancelled` or
`rejected`); while it is active the reason is `hangup`."""

S5_4 = """\
Both parties get `call.ended`, if connected, and are shown their chosen status again.
`minutes` and `coins` are what billing charged for the call (0 if it never started).

When a party's last connection closes, the call waits for them for `peer_lost_grace_s`
(default $peer_lost_grace_s s; 0 ends the call at once). If they reconnect in time,
`welcome` carries the call (§3) and it goes on; otherwise it ends with `peer_lost`. A
ringing call still times out meanwhile. A party who is offline when the call ends is not
told later."""

S5_5 = """\
`welcome.media` and `call.started.media` say which mode the server runs.

In `sfu` mode (the default) each party negotiates one peer connection **with the server**
once the call is active: send `rtc.offer` (audio and video, sendrecv), get `rtc.answer` with
`from: "sfu"`, and trickle your candidates with `rtc.ice` (the server's own candidates are in
its answer). The server forwards each party's encoded media to the other without decoding
it; when the call ends, for any reason, it closes both peer connections, so media really
stops. After a reconnect, send a new `rtc.offer`: it replaces your old peer connection. The
server never offers, so `rtc.answer` from a client is `invalid_state`; a candidate before
your offer is `invalid_state`; an offer the server cannot use is `media_failed`.
If your peer connection with the server is not connected within `media.connect_timeout_s`
(default $connect_timeout_s s) of `call.started` (or of your latest offer), or fails and you
do not re-offer within that time, the call ends with reason `media_failed`: a paid call
never runs on with a black screen.

In `p2p` mode the hub relays `rtc.offer`, `rtc.answer` and
`rtc.ice` between the two parties of an **active** call; while it rings they get
`invalid_state`, so hold local candidates until `call.started`. The relayed frame has the same
`type` and fields plus `from`, the sender's user id. The hub does not read SDP beyond the
size limits below. Names are snake_case: `sdp_mid` and `sdp_mline_index` carry the
browser's `sdpMid` and `sdpMLineIndex`. An `rtc.ice` without `candidate` (or with
`candidate: null`) means end of candidates, and its relayed copy has no `candidate`.

While the peer is disconnected within its grace period, relayed frames are dropped (the
sender is still acked); after reconnecting, start a new offer. The hub does not decide who
offers; a simple convention is that the party who sent `call.invite` offers after
`call.started`."""

S5_6 = """\
Minutes are prepaid: the first is charged when the call starts (a caller who cannot pay
one minute gets `insufficient_balance` at `call.invite`), each next one when it begins.
The payer gets `billing.tick` and `wallet.balance` for every minute charged after the
first, and `billing.low_balance` while fewer than the configured number of further
minutes remain: right after `call.started` if the call starts that way, then with each
tick. When the next minute cannot be paid the call ends with reason
`insufficient_balance`."""

S5_7 = """\
`gift.send` pays for a catalog gift (`GET /v1/gifts`) from the sender's wallet and
credits the receiving host's earnings with their share. The receiver must be a host, and
when `call_id` is given it must be the other party of that active call. The ack carries the
sender's new `balance` and the gift's `entry_id`; the sender and the receiver also get
`wallet.balance`, and the receiver `gift.received` with the same `entry_id`. A retry with
the same `idempotency_key` (per sender) is acked again with the same `entry_id` and
changes nothing: nobody is charged or notified a second time. The same key for another
gift is `idempotency_conflict`."""

S9 = """\
Chat messages are stored (MongoDB in production) before they are acked."""

S9_1 = """\
`chat.send` stores the message and acks with it (`message`); a retry with the same
`client_msg_id` (per sender) returns the original and stores nothing. If the receiver is
connected they get `chat.message` at once; otherwise it waits, and every `chat.message` still
`sent` is pushed, oldest first, right after the `welcome` of their next session. A client
acknowledges with `chat.delivered`; unacknowledged messages come again on the next connect, so
clients drop duplicates by `id`. Text is limited in length, must not be empty, and may
contain no control characters but newline and tab (`chat_invalid_text`). `chat.send` has its
own rate limit on top of the frame limit (`rate_limited`)."""

S9_2 = """\
`chat.delivered` and `chat.read` move messages sent to you forward (sent -> delivered -> read,
never back). Ids that are not yours, unknown, or already there are ignored. The sender gets
one `chat.receipt` listing the ids that moved."""

S9_3 = """\
`chat.typing` is relayed to `to` as `chat.typing` with `from`; it is not stored."""

S9_4 = """\
`chat.history` pages a conversation newest first, `limit` messages at a time; pass the ack's
`next_before` as `before` for the next page. Pages are cut by (time, id), so messages that
arrive while you page never shift a page. Only the two participants may read it
(`chat_forbidden`). The REST API has the same pages: `GET /v1/conversations` and
`GET /v1/conversations/{id}/messages?before=&limit=`. A conversation id is
`dm:<user>:<user>` of the two users, sorted."""

S9_5 = """\
`chat.block` stops messages and calls between the two users, both ways (`chat_blocked`,
`blocked`); `chat.unblock` lifts your own block."""

S6 = """\
An `error` frame carries `code` (below), a human-readable `message` (its wording may
change: match on `code`) and the request's `id` when it could be read (§2). An error never
ends the session.

**Rate limit.** Each connection has a token bucket: bursts of up to `rate_burst` frames
(default $rate_burst), refilled at `rate_per_s` per second (default $rate_per_s). Every
frame takes a token before it is parsed, so bad frames count too. A frame that finds no
token is dropped with error `rate_limited` (carrying its `id` when readable). When
`flood_close_after` frames in a row (default $flood_close_after) have been refused, the
server closes with **$POLICY** `rate limit exceeded` instead of replying; any accepted frame
resets the count.

**Slow consumers.** The server queues at most `send_queue_max` frames (default
$send_queue_max) and `send_queue_max_bytes` bytes (default $send_queue_max_bytes) for a
client; an empty queue always takes one frame, however large. One more and the queued
frames are dropped and the connection is cut without a close frame (the client would not
read it; it sees 1006). So is a client that takes no frame for `send_timeout_s` seconds
(default $send_timeout_s) while frames wait for it: a client that stops reading is treated
like one whose connection dropped (it shows `offline`, its call waits `peer_lost_grace_s`
for it). A client that neither reads nor is sent anything is found by the ping (§1).

**Connection limits.** One client address may hold `max_connections_per_ip` open
connections (default $max_connections_per_ip) and open new ones at `connects_per_ip_per_s`
per second (bursts of $connect_burst_per_ip); one user may start `connects_per_user_per_min`
sessions a minute (bursts of $connect_burst_per_user). Past a limit the connection is
upgraded and closed at once with **$POLICY** and the reason (§7). Behind a reverse proxy the
client address comes from `X-Forwarded-For` when the proxy is in `trusted_proxies`."""

S7 = """\
Close reasons are short texts for people; match on the code."""

S8 = """\
Alice (role `caller`) calls Bob (role `host`) on a hub with billing; `alice ->` is a frame
Alice sends, `alice <-` one she receives, in the order the hub sends them. Without billing,
`call.started` has no `rate` or `balance` and `call.ended` no `minutes` or `coins`."""


SECTIONS: tuple[tuple[str, str, str], ...] = (
    ("1", "Connecting", S1),
    ("2", "Frames, ids, acks and errors", S2),
    ("2.1", "Objects", S2_1),
    ("3", "Welcome", S3),
    ("4", "Presence", S4),
    ("4.1", "Setting your status", S4_1),
    ("4.2", "Watching others", S4_2),
    ("5", "Calls", S5),
    ("5.1", "Inviting", S5_1),
    ("5.2", "Accepting, rejecting, cancelling", S5_2),
    ("5.3", "Ending", S5_3),
    ("5.4", "The end of a call", S5_4),
    ("5.5", "Media negotiation", S5_5),
    ("5.6", "Billing during a call", S5_6),
    ("5.7", "Gifts and wallet", S5_7),
    ("6", "Errors and limits", S6),
    ("7", "Close codes", S7),
    ("8", "Example", S8),
    ("9", "Chat", S9),
    ("9.1", "Sending and receiving", S9_1),
    ("9.2", "Receipts", S9_2),
    ("9.3", "Typing", S9_3),
    ("9.4", "History", S9_4),
    ("9.5", "Blocking", S9_5),
)
SECTION_NUMBERS = frozenset(number for number, _, _ in SECTIONS)

# --- the generated parts -------------------------------------------------------------------

_SECTION_RE = re.compile(r"§(\d+(?:\.\d+)*)\.?\s*(.*)", re.DOTALL)


def _struct_info(cls: type[msgspec.Struct]) -> mi.StructType:
    info = mi.type_info(cls)
    if not isinstance(info, mi.StructType):
        raise TypeError(f"{cls.__name__} is not a plain Struct")
    return info


def _section_of(obj: type) -> tuple[str, str]:
    """(section number, description) from a docstring that starts with ``§N``."""
    doc = (obj.__doc__ or "").strip()
    match = _SECTION_RE.match(doc)
    if match is None:
        raise ValueError(f"{obj.__name__}: docstring must start with the § it belongs to")
    number, text = match.groups()
    if number not in SECTION_NUMBERS:
        raise ValueError(f"{obj.__name__}: docstring cites §{number}, which the doc lacks")
    return number, " ".join(text.replace("``", "`").split())


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _json(value: object) -> str:
    return msgspec.json.encode(value).decode()


def _length(low: int | None, high: int | None, unit: str) -> list[str]:
    if low is not None and high is not None:
        return [f"exactly {low} {unit}" if low == high else f"{low} to {high} {unit}"]
    if high is not None:
        return [f"at most {high} {unit}"]
    if low is not None:
        return [f"at least {low} {unit}"]
    return []


def _bounds(t: mi.IntType | mi.FloatType) -> list[str]:
    low = f"{t.ge} ≤ " if t.ge is not None else f"{t.gt} < " if t.gt is not None else ""
    high = f" ≤ {t.le}" if t.le is not None else f" < {t.lt}" if t.lt is not None else ""
    notes = [f"{low}value{high}"] if low or high else []
    if t.multiple_of is not None:
        notes.append(f"multiple of {t.multiple_of}")
    return notes


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _describe(t: mi.Type) -> tuple[str, list[str]]:
    """(JSON type, constraints and notes) of one msgspec type."""
    if isinstance(t, mi.Metadata):
        kind, notes = _describe(t.type)
        description = (t.extra_json_schema or {}).get("description")
        return kind, [*notes, str(description)] if description else notes
    if isinstance(t, mi.UnionType):
        parts = [_describe(member) for member in t.types]
        return " or ".join(k for k, _ in parts), _unique(n for _, ns in parts for n in ns)
    if isinstance(t, mi.StrType):
        notes = _length(t.min_length, t.max_length, "characters")
        return "string", [*notes, f"pattern `{t.pattern}`"] if t.pattern else notes
    if isinstance(t, mi.BoolType):
        return "boolean", []
    if isinstance(t, mi.IntType):
        return "integer", _bounds(t)
    if isinstance(t, mi.FloatType):
        return "number", _bounds(t)
    if isinstance(t, mi.NoneType):
        return "null", []
    if isinstance(t, mi.LiteralType):
        kinds = {"string" if isinstance(v, str) else "integer" for v in t.values}
        return " or ".join(sorted(kinds)), ["one of " + ", ".join(f"`{v}`" for v in t.values)]
    if isinstance(t, mi.EnumType):
        return "string", ["one of " + ", ".join(f"`{m.value}`" for m in t.cls)]
    if isinstance(t, mi.ListType):
        kind, notes = _describe(t.item_type)
        items = _length(t.min_length, t.max_length, "items")
        return f"array of {kind}", items + (["each: " + ", ".join(notes)] if notes else [])
    if isinstance(t, mi.DictType):
        key, key_notes = _describe(t.key_type)
        value, value_notes = _describe(t.value_type)
        notes = [f"keys: {n}" for n in key_notes] + [f"values: {n}" for n in value_notes]
        return f"object of {key} to {value}", notes
    if isinstance(t, mi.StructType):
        return f"`{t.cls.__name__}` object (§2.1)", []
    raise TypeError(f"protocol_doc cannot describe {t!r}; teach _describe() this type")


def _presence_column(field: mi.Field, *, sent_by_server: bool, omit_defaults: bool) -> str:
    if field.required:
        return "always" if sent_by_server else "required"
    default = field.default_factory() if field.default is msgspec.NODEFAULT else field.default
    if not sent_by_server:
        return f"optional, default `{_json(default)}`"
    return f"omitted when `{_json(default)}`" if omit_defaults else "always"


def _fields_table(info: mi.StructType, *, sent_by_server: bool) -> str:
    omit = bool(info.cls.__struct_config__.omit_defaults)
    rows: list[list[str]] = []
    if info.tag_field is not None:
        tag_presence = "always" if sent_by_server else "required"
        rows.append([f"`{info.tag_field}`", "string", tag_presence, f"`{_json(info.tag)}`"])
    for field in info.fields:
        kind, notes = _describe(field.type)
        note = FIELD_NOTES.get((info.cls.__name__, field.encode_name))
        if note is not None:
            notes = [note, *notes]
        presence = _presence_column(field, sent_by_server=sent_by_server, omit_defaults=omit)
        rows.append([f"`{field.encode_name}`", kind, presence, "; ".join(notes)])
    return _table(("Field", "Type", "Presence", "Constraints and notes"), rows)


def _message_block(cls: type[msgspec.Struct], *, sent_by_server: bool) -> str:
    info = _struct_info(cls)
    _, description = _section_of(cls)
    direction = "server → client" if sent_by_server else "client → server"
    return "\n\n".join(
        (
            f"#### `{info.tag}` ({direction})",
            description,
            _fields_table(info, sent_by_server=sent_by_server),
        )
    )


def _objects() -> list[tuple[mi.StructType, bool]]:
    """Structs nested in messages, in order of first use, each with who sends it."""
    found: dict[type, tuple[mi.StructType, bool]] = {}

    def walk(t: mi.Type, by_server: bool) -> None:
        if isinstance(t, mi.StructType):
            if t.cls not in found:
                found[t.cls] = (t, by_server)
            for f in t.fields:
                walk(f.type, by_server)
        elif isinstance(t, mi.Metadata):
            walk(t.type, by_server)
        elif isinstance(t, mi.UnionType):
            for member in t.types:
                walk(member, by_server)
        elif isinstance(t, mi.ListType):
            walk(t.item_type, by_server)
        elif isinstance(t, mi.DictType):
            walk(t.key_type, by_server)
            walk(t.value_type, by_server)

    for messages, by_server in ((p.CLIENT_MESSAGES, False), (p.SERVER_MESSAGES, True)):
        for cls in messages:
            info = _struct_info(cls)
            for f in info.fields:
                walk(f.type, by_server)
    return list(found.values())


def _objects_block() -> str:
    objects = _objects()
    _check_meanings("object", {info.cls.__name__ for info, _ in objects}, OBJECT_MEANINGS)
    blocks = []
    for info, by_server in objects:
        name = info.cls.__name__
        blocks.append(
            f"#### `{name}`\n\n{OBJECT_MEANINGS[name]}\n\n"
            + _fields_table(info, sent_by_server=by_server)
        )
    return "\n\n".join(blocks)


def _check_meanings(what: str, members: Iterable[object], meanings: Mapping[Any, object]) -> None:
    wanted = set(members)
    missing = sorted(str(m) for m in wanted - set(meanings))
    stale = sorted(str(m) for m in set(meanings) - wanted)
    if missing or stale:
        raise ValueError(
            f"protocol_doc: {what} meanings out of date: missing {missing}, unknown {stale}"
        )


def _enum_table(cls: type[enum.Enum]) -> str:
    if cls is p.ErrorCode:
        _check_meanings("error code", p.ErrorCode, ERROR_MEANINGS)
        return "Error codes:\n\n" + _table(
            ("Code", "Meaning"), ((f"`{m.value}`", ERROR_MEANINGS[m]) for m in p.ErrorCode)
        )
    if cls is p.EndReason:
        _check_meanings("end reason", p.EndReason, END_REASON_MEANINGS)
        rows = ((f"`{m.value}`", END_REASON_MEANINGS[m]) for m in p.EndReason)
        return "`call.ended.reason` is one of:\n\n" + _table(("Reason", "Meaning"), rows)
    if cls is p.CloseCode:
        codes = {int(m): m.name for m in p.CloseCode} | {TRY_AGAIN_LATER: "TRY_AGAIN_LATER"}
        _check_meanings("close code", codes, CLOSE_MEANINGS)
        rows_ = []
        for code in sorted(codes):
            reason, meaning = CLOSE_MEANINGS[code]
            rows_.append([str(code), f"`{codes[code]}`", reason and f"`{reason}`", meaning])
        return _table(("Code", "Name", "Reason", "Meaning"), rows_)
    raise TypeError(f"protocol_doc has no table for {cls.__name__}")


def _setting_value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, bool | list | dict):
        return _json(value)
    return str(value)


def _hub_defaults() -> dict[str, str]:
    hub = HubSettings()
    return {name: _setting_value(getattr(hub, name)) for name in HubSettings.model_fields}


def _limits_block() -> str:
    defaults = _hub_defaults()
    rows = [
        [f"`JALWA_HUB__{name.upper()}`", f"`{defaults[name]}`", field.description or ""]
        for name, field in HubSettings.model_fields.items()
        if name not in HIDDEN_SETTINGS
    ]
    limits = "**Limits.** Operators set these with environment variables:\n\n" + _table(
        ("Setting", "Default", "Meaning"), rows
    )
    sizes = _table(
        ("Field", "Limit"),
        [
            ["`rtc.offer.sdp`, `rtc.answer.sdp`", _max_length(p.RtcOffer, "sdp")],
            ["`rtc.ice.candidate`", _max_length(p.RtcIce, "candidate")],
            ["`presence.watch.user_ids`", _max_length(p.PresenceWatch, "user_ids")],
        ],
    )
    return f"{limits}\n\nField limits from the schemas (see the tables above for all):\n\n{sizes}"


def _max_length(cls: type[msgspec.Struct], name: str) -> str:
    info = _struct_info(cls)
    field = next(f for f in info.fields if f.encode_name == name)
    return "; ".join(n for n in _describe(field.type)[1] if not n.startswith("each:"))


# --- §8: the example, checked against the schemas ------------------------------------------

EXAMPLE_CALL_ID = "c_3Jq9xV2mTf0bLk8a"
_ALICE = p.UserInfo(id="alice", role="caller", name="Alice")
_BOB = p.UserInfo(id="bob", role="host", name="Bob")
_OFFER = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n..."
_ANSWER = "v=0\r\no=- 2890844526 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n..."
_CANDIDATE = "candidate:1 1 udp 2122260223 192.0.2.10 54321 typ host"

# (who, "->" for a frame they send or "<-" for one they receive, frame); a str is a comment
ExampleStep = tuple[str, str, Mapping[str, object] | p.ServerMessage] | str
EXAMPLE: tuple[ExampleStep, ...] = (
    "# both connect; alice's first frame (bob gets his own welcome)",
    (
        "alice",
        "<-",
        p.Welcome(
            session_id="s_Qm4xT1vZ8pLa2Rkc",
            user=_ALICE,
            heartbeat_s=10.0,
            ice_servers=[p.IceServerInfo(urls=["stun:stun.example.net:3478"])],
            media="p2p",
        ),
    ),
    ("alice", "->", {"type": "presence.watch", "id": "1", "user_ids": ["bob"]}),
    ("alice", "<-", p.Ack(id="1", presence={"bob": "available"})),
    ("alice", "->", {"type": "call.invite", "id": "2", "to": "bob"}),
    ("alice", "<-", p.PresenceChanged(user_id="bob", status="busy")),
    ("alice", "<-", p.Ack(id="2", call_id=EXAMPLE_CALL_ID)),
    ("bob", "<-", p.CallIncoming(call_id=EXAMPLE_CALL_ID, caller=_ALICE)),
    ("alice", "<-", p.CallRinging(call_id=EXAMPLE_CALL_ID, callee=_BOB)),
    ("bob", "->", {"type": "call.accept", "id": "b1", "call_id": EXAMPLE_CALL_ID}),
    ("bob", "<-", p.Ack(id="b1")),
    (
        "alice",
        "<-",
        p.CallStarted(
            call_id=EXAMPLE_CALL_ID, peer=_BOB, media="p2p", rate=10, record=False, balance=300
        ),
    ),
    (
        "bob",
        "<-",
        p.CallStarted(call_id=EXAMPLE_CALL_ID, peer=_ALICE, media="p2p", rate=10, record=False),
    ),
    ("alice", "->", {"type": "rtc.offer", "id": "3", "call_id": EXAMPLE_CALL_ID, "sdp": _OFFER}),
    ("bob", "<-", p.RtcOfferOut(call_id=EXAMPLE_CALL_ID, sender="alice", sdp=_OFFER)),
    ("alice", "<-", p.Ack(id="3")),
    ("bob", "->", {"type": "rtc.answer", "id": "b2", "call_id": EXAMPLE_CALL_ID, "sdp": _ANSWER}),
    ("alice", "<-", p.RtcAnswerOut(call_id=EXAMPLE_CALL_ID, sender="bob", sdp=_ANSWER)),
    ("bob", "<-", p.Ack(id="b2")),
    "# trickled candidates, sent without id: no ack",
    (
        "alice",
        "->",
        {
            "type": "rtc.ice",
            "call_id": EXAMPLE_CALL_ID,
            "candidate": _CANDIDATE,
            "sdp_mid": "0",
            "sdp_mline_index": 0,
        },
    ),
    (
        "bob",
        "<-",
        p.RtcIceOut(
            call_id=EXAMPLE_CALL_ID,
            sender="alice",
            candidate=_CANDIDATE,
            sdp_mid="0",
            sdp_mline_index=0,
        ),
    ),
    ("alice", "->", {"type": "rtc.ice", "call_id": EXAMPLE_CALL_ID, "candidate": None}),
    ("bob", "<-", p.RtcIceOut(call_id=EXAMPLE_CALL_ID, sender="alice")),
    "# a mistake: only the caller may cancel",
    ("bob", "->", {"type": "call.cancel", "id": "b3", "call_id": EXAMPLE_CALL_ID}),
    (
        "bob",
        "<-",
        p.Error(
            id="b3",
            code=p.ErrorCode.FORBIDDEN,
            message="only the caller can cancel; use call.reject",
        ),
    ),
    "# two minutes later alice hangs up",
    ("alice", "->", {"type": "call.end", "id": "4", "call_id": EXAMPLE_CALL_ID}),
    ("alice", "<-", p.Ack(id="4")),
    (
        "alice",
        "<-",
        p.CallEnded(call_id=EXAMPLE_CALL_ID, reason=p.EndReason.HANGUP, minutes=2, coins=20),
    ),
    (
        "bob",
        "<-",
        p.CallEnded(call_id=EXAMPLE_CALL_ID, reason=p.EndReason.HANGUP, minutes=2, coins=20),
    ),
    ("alice", "<-", p.PresenceChanged(user_id="bob", status="available")),
)


def _example_block() -> str:
    width = max(len(step[0]) for step in EXAMPLE if not isinstance(step, str))
    lines = []
    for step in EXAMPLE:
        if isinstance(step, str):
            lines.append(step)
            continue
        who, arrow, frame = step
        if isinstance(frame, p.ServerMessage):
            text = p.encode(frame).decode()
        else:
            text = _json(frame)
            p.decode(text)  # raises DecodeFailure if the example drifts from the schemas
        lines.append(f"{who:<{width}} {arrow} {text}")
    return "```text\n" + "\n".join(lines) + "\n```"


_EXTRAS: dict[str, Callable[[], str]] = {
    "2.1": _objects_block,
    "5": lambda: STATE_DIAGRAM,
    "6": _limits_block,
    "8": _example_block,
}

# --- assembly ------------------------------------------------------------------------------


def _anchor(heading: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def _heading(number: str, title: str) -> str:
    return f"{number}. {title}" if "." not in number else f"{number} {title}"


def _check_field_notes() -> None:
    fields = {
        (info.cls.__name__, f.encode_name)
        for info in [*map(_struct_info, (*p.CLIENT_MESSAGES, *p.SERVER_MESSAGES))]
        + [info for info, _ in _objects()]
        for f in info.fields
    }
    stale = sorted(set(FIELD_NOTES) - fields)
    if stale:
        raise ValueError(f"protocol_doc: FIELD_NOTES name fields that do not exist: {stale}")


def _placed() -> dict[str, list[str]]:
    """Generated blocks of messages and enums, keyed by the section their docstring names."""
    _check_field_notes()
    placed: dict[str, list[str]] = {number: [] for number in SECTION_NUMBERS}
    for messages, by_server in ((p.CLIENT_MESSAGES, False), (p.SERVER_MESSAGES, True)):
        for cls in messages:
            placed[_section_of(cls)[0]].append(_message_block(cls, sent_by_server=by_server))
    for enum_cls in (p.EndReason, p.ErrorCode, p.CloseCode):
        placed[_section_of(enum_cls)[0]].append(_enum_table(enum_cls))
    return placed


def render() -> str:
    """The complete Markdown of docs/protocol.md."""
    values = _hub_defaults() | {m.name: str(int(m)) for m in p.CloseCode}
    values["TRY_AGAIN_LATER"] = str(TRY_AGAIN_LATER)
    values["connect_timeout_s"] = _setting_value(MediaSettings().connect_timeout_s)
    placed = _placed()
    contents = []
    for number, title, _ in SECTIONS:
        heading = _heading(number, title)
        contents.append(f"{'  ' * number.count('.')}- [{heading}](#{_anchor(heading)})")
    parts = [INTRO, "Contents:\n\n" + "\n".join(contents)]
    for number, title, prose in SECTIONS:
        level = "##" if "." not in number else "###"
        parts.append(f"{level} {_heading(number, title)}")
        parts.append(Template(prose).substitute(values))
        parts += placed[number]
        if number in _EXTRAS:
            parts.append(_EXTRAS[number]())
    return "\n\n".join(parts) + "\n"


def json_schema() -> str:
    """docs/protocol.schema.json: every client and server message, sorted and indented."""
    schemas, defs = msgspec.json.schema_components(
        (p.AnyClientMessage, *p.SERVER_MESSAGES), ref_template="#/$defs/{name}"
    )
    client_union, *server_refs = schemas
    server_tags = {
        _struct_info(cls).tag: ref["$ref"]
        for cls, ref in zip(p.SERVER_MESSAGES, server_refs, strict=True)
    }
    extra = {
        "ClientMessage": client_union,
        "ServerMessage": {
            "anyOf": server_refs,
            "discriminator": {"propertyName": "type", "mapping": server_tags},
        },
        "ErrorCode": {
            "description": _section_of(p.ErrorCode)[1],
            "enum": [m.value for m in p.ErrorCode],
        },
        "CloseCode": {
            "description": _section_of(p.CloseCode)[1]
            + f" Also {TRY_AGAIN_LATER}: try again later.",
            "enum": sorted({*map(int, p.CloseCode), TRY_AGAIN_LATER}),
        },
    }
    # msgspec already emits EndReason (call.ended.reason is typed with it).
    clash = set(extra) & set(defs)
    if clash:
        raise ValueError(f"protocol_doc: schema names clash with message names: {sorted(clash)}")
    document = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "jalwa signalling protocol v1",
        "description": (
            "Frames of the jalwa signalling WebSocket (docs/protocol.md). A client frame "
            "matches #/$defs/ClientMessage, a server frame #/$defs/ServerMessage. ErrorCode, "
            f"EndReason and CloseCode list the values of error.code, call.ended.reason and "
            f"close codes. Generated by `{REGENERATE}`."
        ),
        "anyOf": [{"$ref": "#/$defs/ClientMessage"}, {"$ref": "#/$defs/ServerMessage"}],
        "$defs": defs | extra,
    }
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write(root: Path = REPO_ROOT) -> list[Path]:
    """Write docs/protocol.md and docs/protocol.schema.json under ``root``."""
    docs = root / "docs"
    docs.mkdir(exist_ok=True)
    written = []
    for name, text in (("protocol.md", render()), ("protocol.schema.json", json_schema())):
        path = docs / name
        path.write_text(text, encoding="utf-8", newline="\n")
        written.append(path)
    return written


def main() -> None:
    for path in write():
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
