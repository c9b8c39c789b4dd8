"""REST: wallet, history, gifts, hosts to call, withdrawals, and the admin endpoints (JWT
bearer auth).

Errors are JSON ``{"error": code, "message": ...}`` with the status the billing error
carries, including aiohttp's own (unknown route, wrong method, body too large) via
``json_errors``; bodies are decoded into typed Structs, so a non-integer amount is a 400.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import msgspec
from aiohttp import web

from billing import receipts
from billing.errors import BillingError
from billing.ledger import Gift, WithdrawalState

from ..auth import Identity, Role, TokenVerifier
from ..calls.billing import rate_of
from ..chat.handlers import wire
from ..errors import AuthError, JalwaError
from ..keys import BILLING_SETTINGS, CALLS, CHAT, LEDGER, OPERATIONS, PRESENCE, SFU, VERIFIER
from ..protocol import EndReason
from ..ws import bearer_token
from . import openapi
from .shapes import (
    AvailableHost,
    CallPage,
    ConversationInfo,
    ConversationPage,
    CreditRequest,
    EndedCall,
    EntryPage,
    GiftList,
    GiftRequest,
    HostList,
    HostRate,
    MessagePage,
    RateRequest,
    RecordingInfo,
    RecordingList,
    WithdrawalInfo,
    WithdrawalList,
    WithdrawalRequest,
)

SIGNATURE_HEADER = "X-Jalwa-Signature"
MAX_PAGE = 200  # the same cap as chat.history over the WebSocket (docs/api.md)
# GET /v1/hosts reads up to this many available hosts and answers the first ``limit`` of
# them by name: an exact, stable order while no more than this many are available.
HOSTS_SCAN = 1000
log = logging.getLogger(__name__)


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)


class BadQuery(JalwaError):
    """A query parameter that is not what the route takes (400)."""

    code = "invalid_request"
    status = 400


# aiohttp's own refusals, as codes: what a client can branch on without reading prose.
_HTTP_CODES = {
    400: "invalid_request",
    401: "token_invalid",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
}


@web.middleware
async def json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every error the API answers is JSON ``{error, message}`` (docs/api.md), including
    aiohttp's 404/405/413 and a handler's unexpected failure (500, details only in the log)."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        text = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        return _error(exc.status, code, text or exc.reason)
    except Exception:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            raise  # the socket has its own close codes; there is no HTTP reply left to send
        log.exception("%s %s failed", request.method, request.path)
        return _error(500, "internal", "internal error; it has been logged")


Handler = Callable[[web.Request, Identity], Awaitable[web.StreamResponse]]


def authed(
    *roles: Role,
) -> Callable[[Handler], Callable[[web.Request], Awaitable[web.StreamResponse]]]:
    """Verify the bearer token (401) and the role (403), map billing errors to statuses."""

    def wrap(handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def run(request: web.Request) -> web.StreamResponse:
            verifier: TokenVerifier = request.app[VERIFIER]
            try:
                who = verifier.verify(bearer_token(request))
            except AuthError as exc:
                return _error(401, exc.code, exc.message)
            if roles and who.role not in roles:
                return _error(403, "forbidden", "your role may not do this")
            try:
                if await request.app[OPERATIONS].bans.get(who.user_id) is not None:
                    return _error(403, "banned", "this account is banned")
                return await handler(request, who)
            except BillingError as exc:
                return _error(exc.status, exc.code, exc.message)
            except JalwaError as exc:
                return _error(getattr(exc, "status", 400), exc.code, exc.message)
            except msgspec.ValidationError as exc:
                return _error(400, "invalid_request", str(exc))
            except msgspec.DecodeError as exc:
                return _error(400, "invalid_request", f"body is not valid JSON: {exc}")
            except web.HTTPException:
                raise  # aiohttp's own (413, ...): json_errors words them
            except Exception:
                # A store going away (the database, MongoDB): say so, as the socket does.
                log.exception("%s %s failed", request.method, request.path)
                return _error(503, "unavailable", "a store is unavailable; try again shortly")

        return run

    return wrap


T = TypeVar("T")


async def _body(request: web.Request, kind: type[T]) -> T:
    return msgspec.json.decode(await request.read(), type=kind)


def _int_query(
    request: web.Request, name: str, default: int | None, hi: int | None = None
) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    # int() also takes "²", "٣" and "1_0"; a query takes plain ASCII digits only.
    if not (raw.isascii() and raw.isdigit()):
        raise BadQuery(f"{name} must be a non-negative integer")
    value = int(raw)
    if hi is not None and value > hi:
        raise BadQuery(f"{name} must be at most {hi}")
    return value


def _time_query(request: web.Request, name: str) -> float | None:
    """A unix time in seconds (``next_before`` of the last page), or None when absent."""
    raw = request.query.get(name)
    if raw is None:
        return None
    whole, _, fraction = raw.partition(".")
    if not (raw.isascii() and whole.isdigit() and (fraction == "" or fraction.isdigit())):
        raise BadQuery(f"{name} must be a unix time in seconds, like 1767225600.25")
    value = float(raw)
    if not math.isfinite(value):
        raise BadQuery(f"{name} is out of range")
    return value


def _page_limit(request: web.Request) -> int:
    limit = _int_query(request, "limit", 50, MAX_PAGE)
    if not limit:
        raise BadQuery(f"limit must be 1 to {MAX_PAGE}")
    return limit


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(data), status=status, content_type="application/json"
    )


# --- user endpoints ---------------------------------------------------------------------


@authed()
async def get_wallet(request: web.Request, who: Identity) -> web.StreamResponse:
    return _json(await request.app[LEDGER].balances(who.user_id))


@authed()
async def get_entries(request: web.Request, who: Identity) -> web.StreamResponse:
    limit = _page_limit(request)
    before = _int_query(request, "before", None, 2**62)
    entries = await request.app[LEDGER].entries(who.user_id, limit=limit, before=before)
    nxt = entries[-1].id if len(entries) == limit else None
    return _json(EntryPage(entries, nxt))


@authed()
async def get_calls(request: web.Request, who: Identity) -> web.StreamResponse:
    limit = _page_limit(request)
    before = _time_query(request, "before")
    calls = await request.app[LEDGER].calls(who.user_id, limit=limit, before=before)
    nxt = calls[-1].started_at if len(calls) == limit else None
    return _json(CallPage(calls, nxt))


@authed()
async def get_gifts(request: web.Request, who: Identity) -> web.StreamResponse:
    gifts = await request.app[LEDGER].gifts(active_only=True)
    return _json(GiftList(gifts))


@authed()
async def post_recharge(request: web.Request, who: Identity) -> web.StreamResponse:
    secret = request.app[BILLING_SETTINGS].recharge_secret
    if secret is None:
        return _error(503, "recharge_disabled", "no payment provider secret is configured")
    body = await request.content.read(16 * 1024 + 1)
    if len(body) > 16 * 1024:
        return _error(413, "too_large", "receipt too large")
    receipt = receipts.verify(
        secret.get_secret_value().encode(), body, request.headers.get(SIGNATURE_HEADER, "")
    )
    if receipt.user_id != who.user_id:
        return _error(403, "forbidden", "this receipt is for another user")
    balances = await request.app[LEDGER].recharge(
        receipt.provider, receipt.txn_id, receipt.user_id, receipt.amount
    )
    return _json(balances)


@authed()
async def get_hosts(request: web.Request, who: Identity) -> web.StreamResponse:
    """Hosts one can call now: live, status available (in a call they are busy), never the
    asker; only what a list shows (no place, node or session). Every node shares presence
    (Redis) and the ledger, so every node gives the same answer."""
    limit = _page_limit(request)
    store = request.app[PRESENCE].store
    host = Role.HOST.value
    found = await store.available(host, HOSTS_SCAN + 1)  # + 1: the asker may be one of them
    records = await store.get_many(uid for uid in found if uid != who.user_id)
    # Read again after the index: a host may have gone busy or away in between.
    shown = sorted(
        (r for r in records.values() if r.status == "available" and r.role == host),
        key=lambda r: (r.name, r.user_id),
    )[:limit]
    ledger, billing = request.app[LEDGER], request.app[BILLING_SETTINGS]
    rates = await asyncio.gather(*(rate_of(ledger, billing, r.user_id) for r in shown))
    hosts = [AvailableHost(r.user_id, r.name, rate) for r, rate in zip(shown, rates, strict=True)]
    return _json(HostList(hosts))


@authed(Role.HOST)
async def post_withdrawal(request: web.Request, who: Identity) -> web.StreamResponse:
    req = await _body(request, WithdrawalRequest)
    w = await request.app[LEDGER].request_withdrawal(req.idempotency_key, who.user_id, req.amount)
    # 201 when this request created it; a replay of the key returns it as it is now, 200.
    return _json(WithdrawalInfo.of(w), status=200 if w.replayed else 201)


@authed(Role.HOST)
async def get_withdrawals(request: web.Request, who: Identity) -> web.StreamResponse:
    items = await request.app[LEDGER].withdrawals(host=who.user_id, state=None, limit=MAX_PAGE)
    return _json(WithdrawalList([WithdrawalInfo.of(w) for w in items]))


# --- chat -------------------------------------------------------------------------------


@authed()
async def get_conversations(request: web.Request, who: Identity) -> web.StreamResponse:
    limit = _page_limit(request)
    page = await request.app[CHAT].conversations(who.user_id, request.query.get("before"), limit)
    items = [
        ConversationInfo(
            id=c.id,
            participants=list(c.participants),
            last_message=wire(c.last_message) if c.last_message is not None else None,
            unread=c.unread.get(who.user_id, 0),
        )
        for c in page.items
    ]
    return _json(ConversationPage(items, page.next_before))


@authed()
async def get_messages(request: web.Request, who: Identity) -> web.StreamResponse:
    limit = _page_limit(request)
    conv = request.match_info["conversation_id"]
    page = await request.app[CHAT].history(who.user_id, conv, request.query.get("before"), limit)
    return _json(MessagePage([wire(m) for m in page.items], page.next_before))


# --- admin endpoints --------------------------------------------------------------------


@authed(Role.ADMIN)
async def admin_credit(request: web.Request, who: Identity) -> web.StreamResponse:
    req = await _body(request, CreditRequest)
    balances = await request.app[LEDGER].credit(
        req.idempotency_key, req.user_id, req.amount, admin=who.user_id
    )
    return _json(balances)


@authed(Role.ADMIN)
async def admin_rate(request: web.Request, who: Identity) -> web.StreamResponse:
    req = await _body(request, RateRequest)
    await request.app[LEDGER].set_host_rate(request.match_info["host"], req.rate)
    return _json(HostRate(request.match_info["host"], req.rate))


@authed(Role.ADMIN)
async def admin_gift(request: web.Request, who: Identity) -> web.StreamResponse:
    req = await _body(request, GiftRequest)
    gift = Gift(request.match_info["gift_id"], req.name, req.price, req.active)
    await request.app[LEDGER].put_gift(gift)
    return _json(gift)


@authed(Role.ADMIN)
async def admin_withdrawals(request: web.Request, who: Identity) -> web.StreamResponse:
    state = request.query.get("state")
    if state not in (None, "pending", "paid", "rejected"):
        return _error(400, "invalid_request", "state must be pending, paid or rejected")
    items = await request.app[LEDGER].withdrawals(
        host=request.query.get("host"), state=cast(WithdrawalState | None, state), limit=MAX_PAGE
    )
    return _json(WithdrawalList([WithdrawalInfo.of(w) for w in items]))


def _decide(approve: bool) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    @authed(Role.ADMIN)
    async def decide(request: web.Request, who: Identity) -> web.StreamResponse:
        try:
            withdrawal_id = int(request.match_info["wid"])
        except ValueError:
            return _error(404, "not_found", "no such withdrawal")
        w = await request.app[LEDGER].decide_withdrawal(
            withdrawal_id, approve=approve, admin=who.user_id
        )
        return _json(WithdrawalInfo.of(w))

    return decide


@authed(Role.ADMIN)
async def admin_end_call(request: web.Request, who: Identity) -> web.StreamResponse:
    if not await request.app[CALLS].end_call_anywhere(
        request.match_info["call_id"], EndReason.ADMIN
    ):
        return _error(404, "not_found", "no such call running")
    return _json(EndedCall(request.match_info["call_id"]))


# --- recordings ---------------------------------------------------------------------------


@authed(Role.ADMIN)
async def admin_recordings(request: web.Request, who: Identity) -> web.StreamResponse:
    sfu = request.app.get(SFU)
    items = await sfu.recordings() if sfu is not None else []
    return _json(
        RecordingList(
            [
                RecordingInfo(
                    call_id=r.call_id,
                    party=r.party,
                    file=r.path.name,
                    size_bytes=r.size_bytes,
                    duration_s=r.duration_s,
                    complete=r.complete,
                )
                for r in items
            ]
        )
    )


@authed(Role.ADMIN)
async def admin_recording_file(request: web.Request, who: Identity) -> web.StreamResponse:
    sfu = request.app.get(SFU)
    call_id, party = request.match_info["call_id"], request.match_info["party"]
    # Only a file the SFU lists is served: no path from the request reaches the disk.
    for rec in await sfu.recordings() if sfu is not None else []:
        if rec.call_id == call_id and rec.party == party and rec.complete:
            return web.FileResponse(
                rec.path, headers={"Content-Disposition": f'attachment; filename="{rec.path.name}"'}
            )
    return _error(404, "not_found", "no finished recording of that call and party")


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/v1/wallet", get_wallet)
    r.add_get("/v1/wallet/entries", get_entries)
    r.add_post("/v1/wallet/recharge", post_recharge)
    r.add_get("/v1/calls", get_calls)
    r.add_get("/v1/gifts", get_gifts)
    r.add_get("/v1/hosts", get_hosts)
    r.add_get("/v1/conversations", get_conversations)
    r.add_get("/v1/conversations/{conversation_id}/messages", get_messages)
    r.add_post("/v1/withdrawals", post_withdrawal)
    r.add_get("/v1/withdrawals", get_withdrawals)
    r.add_post("/v1/admin/credit", admin_credit)
    r.add_put("/v1/admin/hosts/{host}/rate", admin_rate)
    r.add_put("/v1/admin/gifts/{gift_id}", admin_gift)
    r.add_get("/v1/admin/withdrawals", admin_withdrawals)
    r.add_post("/v1/admin/withdrawals/{wid}/approve", _decide(True))
    r.add_post("/v1/admin/withdrawals/{wid}/reject", _decide(False))
    r.add_post("/v1/admin/calls/{call_id}/end", admin_end_call)
    r.add_get("/v1/admin/recordings", admin_recordings)
    r.add_get("/v1/admin/recordings/{call_id}/{party}", admin_recording_file)
    openapi.install(app)  # GET /v1/openapi.json, and the operations above for it
