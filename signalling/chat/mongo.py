"""``ChatStore`` on MongoDB through ``pymongo.AsyncMongoClient`` (never motor).

Collections (in the given database):

- ``messages``: ``{_id: message id, conversation_id, sender, receiver, client_msg_id, text,
  created_at: double, status, applied: bool}``;
- ``conversations``: ``{_id: conversation id, participants: [lo, hi], unread_0, unread_1
  (unread of participants[0] / [1]), last_at, last_id}``; the last message itself is read
  from ``messages`` so its status is current;
- ``blocks``: ``{_id: "<blocker>:<blocked>" (escaped), blocker, blocked, created_at}``.

Kept within what both MongoDB and the mongoeco wire server used in tests honour: single-
document atomic updates only (no multi-document transactions, no change streams), explicit
index names, and every value read back checked in code. Values given in are trusted
(store.py): the handlers ran the chat rules on them.

Crash safety without transactions: a message is inserted first (the unique index on
``(sender, client_msg_id)`` makes the insert the point of no return), then its effect on the
conversation (unread +1, last message) is applied once: ``applied`` is flipped false -> true
atomically and only the caller that flipped it updates the conversation. A retried send of a
message whose conversation update was lost in a crash applies it then.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Final

from pymongo import AsyncMongoClient, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError, PyMongoError

from .ids import MessageIds, block_key, conversation_id, participants, stored_message
from .model import (
    STATUS_RANK,
    STATUSES,
    ChatBlocked,
    ChatUnavailable,
    Conversation,
    Cursor,
    MarkRequest,
    Message,
    NewMessage,
    Status,
)

Doc = dict[str, Any]

# Explicit names: the wire server and MongoDB then agree on them, and a changed key set
# fails loudly (IndexOptionsConflict) instead of silently adding a second index.
INDEXES: Final[dict[str, list[tuple[str, tuple[tuple[str, int], ...], bool]]]] = {
    "messages": [
        ("messages_sender_client_msg_id_unique", (("sender", 1), ("client_msg_id", 1)), True),
        (
            "messages_conversation_created",
            (("conversation_id", 1), ("created_at", -1), ("_id", -1)),
            False,
        ),
        (
            "messages_receiver_status_created",
            (("receiver", 1), ("status", 1), ("created_at", 1), ("_id", 1)),
            False,
        ),
        ("messages_created", (("created_at", 1),), False),  # count_since (admin stats)
    ],
    "blocks": [
        ("blocks_blocker", (("blocker", 1),), False),
        ("blocks_blocked", (("blocked", 1),), False),
    ],
    "conversations": [
        (
            "conversations_participants_activity",
            (("participants", 1), ("last_at", -1), ("_id", -1)),
            False,
        ),
    ],
}
_ID_RETRIES: Final = 3


class MongoChat:
    """The chat store on MongoDB. The client is owned by the caller; ``close`` does nothing."""

    def __init__(
        self,
        client: AsyncMongoClient[Doc],
        database: str,
        now: Callable[[], float],
    ) -> None:
        db = client[database]
        self._messages: AsyncCollection[Doc] = db["messages"]
        self._conversations: AsyncCollection[Doc] = db["conversations"]
        self._blocks: AsyncCollection[Doc] = db["blocks"]
        self._now = now
        self._ids = MessageIds()
        self._indexed = False
        self._index_lock = asyncio.Lock()

    async def ensure_indexes(self) -> None:
        """Create the indexes (idempotent). The app calls it at start; ``send`` makes sure
        it ran once per object, since deduplication depends on the unique index."""
        async with self._index_lock, _errors():
            for collection, specs in INDEXES.items():
                coll = self._messages.database[collection]
                for name, keys, unique in specs:
                    await coll.create_index(list(keys), name=name, unique=unique)
            self._indexed = True

    async def count_since(self, since: float) -> int:
        async with _errors():
            return await self._messages.count_documents({"created_at": {"$gte": since}})

    async def send(self, message: NewMessage) -> tuple[Message, bool]:
        sender, receiver, client_msg_id = message.sender, message.receiver, message.client_msg_id
        if not self._indexed:
            await self.ensure_indexes()
        async with _errors():
            original = await self._by_client(sender, client_msg_id)
            if original is not None:
                await self._apply(original)
                return original, False
            if await self._blocked(sender, receiver):
                raise ChatBlocked("you cannot message this user")
            created_at = self._now()
            for _ in range(_ID_RETRIES):
                msg = stored_message(self._ids, message, created_at)
                try:
                    await self._messages.insert_one({**_message_doc(msg), "applied": False})
                except DuplicateKeyError as exc:
                    if _duplicate_of_id(exc):
                        continue  # an id collision with another process: draw a new id
                    original = await self._by_client(sender, client_msg_id)
                    if original is None:
                        raise ChatUnavailable("duplicate message vanished") from exc
                    await self._apply(original)
                    return original, False
                await self._apply(msg)
                return msg, True
        raise ChatUnavailable("could not allocate a message id")

    async def _by_client(self, sender: str, client_msg_id: str) -> Message | None:
        doc = await self._messages.find_one({"sender": sender, "client_msg_id": client_msg_id})
        return None if doc is None else _message(doc)

    async def _apply(self, msg: Message) -> None:
        """Count the message in its conversation, exactly once (whoever claims it)."""
        claimed = await self._messages.find_one_and_update(
            {"_id": msg.id, "applied": False}, {"$set": {"applied": True}}, projection={"_id": 1}
        )
        if claimed is None:
            return
        pair = participants(msg.sender, msg.receiver)
        receiver_slot = pair.index(msg.receiver)
        await self._conversations.update_one(
            {"_id": msg.conversation_id},
            {
                "$setOnInsert": {"participants": list(pair)},
                "$inc": {f"unread_{receiver_slot}": 1, f"unread_{1 - receiver_slot}": 0},
            },
            upsert=True,
        )
        # The last message only ever moves forward in (created_at, id) order, whatever order
        # concurrent senders get here in.
        await self._conversations.update_one(
            {
                "_id": msg.conversation_id,
                "$or": [
                    {"last_at": {"$exists": False}},
                    {"last_at": {"$lt": msg.created_at}},
                    {"last_at": msg.created_at, "last_id": {"$lt": msg.id}},
                ],
            },
            {"$set": {"last_at": msg.created_at, "last_id": msg.id}},
        )

    async def mark(self, request: MarkRequest) -> list[Message]:
        user, target = request.user, request.status
        earlier = [s for s in STATUSES if STATUS_RANK[s] < STATUS_RANK[target]]
        advanced: list[Message] = []
        read_in: Counter[tuple[str, int]] = Counter()  # (conversation, user's slot) -> count
        async with _errors():
            for mid in request.message_ids:
                # One atomic conditional update per message: exactly one caller advances a
                # message to a given status, so receipts and unread counts stay exact.
                before = await self._messages.find_one_and_update(
                    {"_id": mid, "receiver": user, "status": {"$in": earlier}},
                    {"$set": {"status": target}},
                    return_document=ReturnDocument.BEFORE,
                )
                if before is None:
                    continue
                msg = _message({**before, "status": target})
                advanced.append(msg)
                if target == "read":
                    slot = participants(msg.sender, msg.receiver).index(user)
                    read_in[msg.conversation_id, slot] += 1
            for (cid, slot), count in read_in.items():
                unread = f"unread_{slot}"
                await self._conversations.update_one({"_id": cid}, {"$inc": {unread: -count}})
                await self._conversations.update_one(
                    {"_id": cid, unread: {"$lt": 0}}, {"$set": {unread: 0}}
                )
        return advanced

    async def history(
        self, conversation_id: str, before: Cursor | None, limit: int
    ) -> list[Message]:
        query: Doc = {"conversation_id": conversation_id}
        if before is not None:
            query["$or"] = _older_than(before, "created_at")
        async with _errors():
            found = self._messages.find(query).sort([("created_at", -1), ("_id", -1)])
            return [_message(doc) async for doc in found.limit(limit)]

    async def conversations(
        self, user: str, before: Cursor | None, limit: int
    ) -> list[Conversation]:
        query: Doc = {"participants": user, "last_at": {"$exists": True}}
        if before is not None:
            query["$or"] = _older_than(before, "last_at")
        async with _errors():
            found = self._conversations.find(query).sort([("last_at", -1), ("_id", -1)])
            docs = [doc async for doc in found.limit(limit)]
            last_ids = [_str(doc, "last_id") for doc in docs]
            lasts = {}
            if last_ids:
                async for m in self._messages.find({"_id": {"$in": last_ids}}):
                    lasts[_str(m, "_id")] = _message(m)
        return [_conversation(doc, lasts.get(_str(doc, "last_id"))) for doc in docs]

    async def undelivered(self, user: str, limit: int) -> list[Message]:
        async with _errors():
            found = self._messages.find({"receiver": user, "status": "sent"})
            found = found.sort([("created_at", 1), ("_id", 1)]).limit(limit)
            return [_message(doc) async for doc in found]

    async def block(self, user: str, other: str) -> None:
        async with _errors():
            await self._blocks.update_one(
                {"_id": block_key(user, other)},
                {"$setOnInsert": {"blocker": user, "blocked": other, "created_at": self._now()}},
                upsert=True,
            )

    async def unblock(self, user: str, other: str) -> None:
        async with _errors():
            await self._blocks.delete_one({"_id": block_key(user, other)})

    async def is_blocked(self, a: str, b: str) -> bool:
        async with _errors():
            return await self._blocked(a, b)

    async def blocked_with(self, user: str, limit: int) -> frozenset[str]:
        others: set[str] = set()
        async with _errors():
            for mine, theirs in (("blocker", "blocked"), ("blocked", "blocker")):
                found = self._blocks.find({mine: user}, projection={theirs: 1}).limit(limit)
                others.update([str(d[theirs]) async for d in found])
        return frozenset(sorted(others)[:limit])

    async def _blocked(self, a: str, b: str) -> bool:
        keys = [block_key(a, b), block_key(b, a)]
        return (
            await self._blocks.find_one({"_id": {"$in": keys}}, projection={"_id": 1}) is not None
        )

    async def close(self) -> None:
        """The client belongs to the caller, who closes it."""


# --- documents <-> values -----------------------------------------------------------------


@asynccontextmanager
async def _errors() -> AsyncIterator[None]:
    """Driver failures become ``ChatUnavailable`` (one exception tree per package)."""
    try:
        yield
    except DuplicateKeyError as exc:  # only ever handled inside; one escaping is a bug
        raise ChatUnavailable(f"unexpected duplicate key: {exc}") from exc
    except PyMongoError as exc:
        raise ChatUnavailable(f"chat store unavailable: {exc}") from exc


def _older_than(cursor: Cursor, time_field: str) -> list[Doc]:
    return [
        {time_field: {"$lt": cursor.created_at}},
        {time_field: cursor.created_at, "_id": {"$lt": cursor.id}},
    ]


def _duplicate_of_id(exc: DuplicateKeyError) -> bool:
    details = exc.details or {}
    pattern = details.get("keyPattern")
    if isinstance(pattern, Mapping):
        return list(pattern) == ["_id"]
    return "index: _id_ " in str(details.get("errmsg", exc))


def _message_doc(msg: Message) -> Doc:
    return {
        "_id": msg.id,
        "conversation_id": msg.conversation_id,
        "sender": msg.sender,
        "receiver": msg.receiver,
        "client_msg_id": msg.client_msg_id,
        "text": msg.text,
        "created_at": msg.created_at,
        "status": msg.status,
    }


def _str(doc: Mapping[str, Any], key: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str):
        raise ChatUnavailable(f"malformed chat document: {key} is {type(value).__name__}")
    return value


def _float(doc: Mapping[str, Any], key: str) -> float:
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ChatUnavailable(f"malformed chat document: {key} is {type(value).__name__}")
    return float(value)


def _int(doc: Mapping[str, Any], key: str) -> int:
    value = doc.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ChatUnavailable(f"malformed chat document: {key} is {type(value).__name__}")
    return value


def _status(doc: Mapping[str, Any]) -> Status:
    value = doc.get("status")
    for status in STATUSES:
        if value == status:
            return status
    raise ChatUnavailable(f"malformed chat document: status {value!r}")


def _message(doc: Mapping[str, Any]) -> Message:
    return Message(
        id=_str(doc, "_id"),
        conversation_id=_str(doc, "conversation_id"),
        sender=_str(doc, "sender"),
        receiver=_str(doc, "receiver"),
        client_msg_id=_str(doc, "client_msg_id"),
        text=_str(doc, "text"),
        created_at=_float(doc, "created_at"),
        status=_status(doc),
    )


def _conversation(doc: Mapping[str, Any], last: Message | None) -> Conversation:
    cid = _str(doc, "_id")
    pair = doc.get("participants")
    if not (
        isinstance(pair, list)
        and len(pair) == 2
        and all(isinstance(user, str) for user in pair)
        and pair[0] < pair[1]
        and conversation_id(pair[0], pair[1]) == cid
    ):
        raise ChatUnavailable(f"malformed chat document: participants of {cid}")
    lo, hi = pair
    unread = {lo: max(0, _int(doc, "unread_0")), hi: max(0, _int(doc, "unread_1"))}
    return Conversation(cid, (lo, hi), last, unread)
