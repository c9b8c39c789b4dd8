"""The chat rules (signalling/chat/rules.py): every refusal of bad chat input, made before a
store is asked, and the pure id and cursor functions. No store, no socket."""

from __future__ import annotations

import re

import pytest

from signalling.chat import rules
from signalling.chat.ids import MessageIds, conversation_id, participants_of
from signalling.chat.model import (
    MAX_MARK_IDS,
    ChatBlocked,
    ChatError,
    ChatForbidden,
    ChatInvalid,
    ChatInvalidText,
    ChatNotFound,
    Cursor,
    MarkRequest,
    NewMessage,
)
from signalling.errors import JalwaError

MAX_TEXT = 50


# --- chat.send ----------------------------------------------------------------------------


def test_new_message_is_the_checked_request() -> None:
    new = rules.new_message("alice", "bob", "c1", "hello ✨\nline two\ttab", MAX_TEXT)
    assert new == NewMessage("alice", "bob", "c1", "hello ✨\nline two\ttab")


def test_cannot_message_yourself() -> None:
    with pytest.raises(ChatInvalid, match="cannot message yourself"):
        rules.new_message("alice", "alice", "c1", "hi", MAX_TEXT)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        ("   \n\t", "empty"),
        ("x" * (MAX_TEXT + 1), "limit is 50"),
        ("bell\x07", "control character U+0007"),
        ("nul\x00", "control character U+0000"),
        ("cr\r\n", "control character U+000D"),
        ("del\x7f", "control character U+007F"),
        ("c1 control\x85", "control character U+0085"),
        ("lone \ud800 surrogate", "lone surrogate U+D800"),
        ("lone \udcff low", "lone surrogate U+DCFF"),
        (None, "must be a string"),
    ],
)
def test_invalid_text_is_rejected(text: object, why: str) -> None:
    with pytest.raises(ChatInvalidText, match=re.escape(why)) as info:
        rules.new_message("alice", "bob", "c1", text, MAX_TEXT)
    assert info.value.code == "chat_invalid_text"


def test_text_is_checked_before_the_users() -> None:
    with pytest.raises(ChatInvalidText):
        rules.new_message("alice", "alice", "", "", MAX_TEXT)


def test_text_at_the_limit_and_unicode_are_accepted() -> None:
    for text in ["x" * MAX_TEXT, "👩\u200d👩\u200d👧 family", "नमस्ते", "a\u200db"]:
        assert rules.new_message("alice", "bob", "c1", text, MAX_TEXT).text == text


def test_validate_text_accepts_utf8_bytes_and_rejects_invalid_utf8() -> None:
    assert rules.validate_text("héllo".encode(), 10) == "héllo"
    with pytest.raises(ChatInvalidText, match="not valid UTF-8"):
        rules.validate_text(b"bad \xff byte", 10)
    with pytest.raises(ChatInvalidText, match="not valid UTF-8"):
        rules.validate_text(b"\xed\xa0\x80", 10)  # an encoded surrogate
    with pytest.raises(ChatInvalidText, match="must be a string"):
        rules.validate_text(12, 10)


@pytest.mark.parametrize(
    ("sender", "receiver", "client_msg_id", "why"),
    [
        ("alice", "", "c1", "receiver must be"),
        ("alice", 42, "c1", "receiver must be"),
        ("", "bob", "c1", "sender must be"),
        ("a" * 201, "bob", "c1", "sender must be"),
        ("alice", "bob", "", "client_msg_id must be"),
        ("alice", "bob", "c" * 65, "client_msg_id must be"),
        ("alice", "bob", 7, "client_msg_id must be"),
    ],
)
def test_send_ids_are_checked(
    sender: object, receiver: object, client_msg_id: object, why: str
) -> None:
    with pytest.raises(ChatInvalid, match=why) as info:
        rules.new_message(sender, receiver, client_msg_id, "hi", MAX_TEXT)
    assert info.value.code == "chat_invalid"


# --- receipts -----------------------------------------------------------------------------


def test_mark_request_dedupes_ids_in_the_order_given() -> None:
    request = rules.mark_request("bob", ["m2", "m1", "m2"], "delivered")
    assert request == MarkRequest("bob", ("m2", "m1"), "delivered")
    assert rules.mark_request("bob", [], "read") == MarkRequest("bob", (), "read")


@pytest.mark.parametrize(
    ("user", "ids", "status", "why"),
    [
        ("bob", ["m1"], "sent", "status must be"),
        ("bob", ["m1"], "seen", "status must be"),
        ("bob", ["m1"], "", "status must be"),
        ("bob", "m1", "read", "must be a list"),  # a string, not a list of ids
        ("bob", ["m1", 7], "read", "non-empty strings"),
        ("bob", ["m1", ""], "read", "non-empty strings"),
        ("bob", ["m" * 65], "read", "non-empty strings"),
        ("bob", ["m"] * (MAX_MARK_IDS + 1), "read", "at most 500"),
        ("", ["m1"], "read", "user id must be"),
    ],
)
def test_mark_rejects_malformed_requests(user: str, ids: object, status: str, why: str) -> None:
    with pytest.raises(ChatInvalid, match=why):
        rules.mark_request(user, ids, status)


# --- reading ------------------------------------------------------------------------------


def test_only_participants_read_a_conversation() -> None:
    cid = conversation_id("alice", "bob")
    assert rules.readable_conversation("alice", cid) == cid
    assert rules.readable_conversation("bob", cid) == cid
    with pytest.raises(ChatForbidden) as info:
        rules.readable_conversation("mallory", cid)
    assert info.value.code == "chat_forbidden"
    for bad in ("dm:alice", "dm:bob:alice"):  # malformed; not canonical
        with pytest.raises(ChatNotFound):
            rules.readable_conversation("alice", bad)
    with pytest.raises(ChatInvalid):
        rules.readable_conversation("", cid)


@pytest.mark.parametrize("limit", [0, -1, 201, 1000, True, 2.0, "10"])
def test_limits_outside_one_to_max_page_are_refused(limit: object) -> None:
    with pytest.raises(ChatInvalid, match="limit must be"):
        rules.check_limit(limit)


def test_limits_inside_are_accepted() -> None:
    assert [rules.check_limit(n) for n in (1, 50, 200)] == [1, 50, 200]


def test_cursor_is_none_or_one_a_page_gave() -> None:
    assert rules.cursor(None) is None
    c = Cursor(12.5, "01ARZ3NDEKTSV4RRFFQ69G5FAV")
    assert rules.cursor(c.encode()) == c
    for bad in ("cursor", 5, c):  # garbage, not a string, an undecoded Cursor
        with pytest.raises(ChatInvalid):
            rules.cursor(bad)


# --- blocks, typing, calls: two different users ------------------------------------------


def test_pairs_are_two_different_users() -> None:
    assert rules.check_pair("alice", "bob") == ("alice", "bob")
    for a, b in [("alice", "alice"), ("alice", ""), (None, "bob")]:
        with pytest.raises(ChatInvalid):
            rules.check_pair(a, b)


# --- pure functions -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"), [("alice", "bob"), ("a:b", "c"), ("a", "b:c"), ("x%3Ay", "x:y"), ("%", "%25")]
)
def test_conversation_ids_are_canonical_and_reversible(a: str, b: str) -> None:
    cid = conversation_id(a, b)
    assert cid == conversation_id(b, a)
    assert participants_of(cid) == tuple(sorted((a, b)))


def test_conversation_ids_of_different_pairs_differ() -> None:
    pairs = [("a:b", "c"), ("a", "b:c"), ("x%3Ay", "x:y"), ("x", "y")]
    assert len({conversation_id(a, b) for a, b in pairs}) == len(pairs)
    for bad in ("", "dm:", "dm:a", "dm:a:a", "dm:b:a", "dm:a:b:c", "dm:a%3a:b", "xx:a:b", 7):
        with pytest.raises(ChatNotFound):
            participants_of(bad)


def test_cursor_round_trips_and_rejects_garbage() -> None:
    c = Cursor(1_700_000_000.123456, "01ARZ3NDEKTSV4RRFFQ69G5FAV")
    assert Cursor.decode(c.encode()) == c
    assert Cursor.decode(Cursor(0.1 + 0.2, "dm:a:b").encode()) == Cursor(0.1 + 0.2, "dm:a:b")
    for bad in ("", "x", "1.5:", "nan:abc", "inf:abc", ":abc", 5, None):
        with pytest.raises(ChatInvalid):
            Cursor.decode(bad)


def test_message_ids_are_monotonic_and_time_ordered() -> None:
    gen = MessageIds()
    ids = [gen.next(1000.0) for _ in range(100)] + [gen.next(999.0), gen.next(1000.5)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert MessageIds().next(1001.0) > ids[-1]  # another process, a later millisecond
    # Overflow of the random part borrows the next millisecond.
    maxed = MessageIds(randbits=lambda bits: (1 << bits) - 1)
    first = maxed.next(5.0)
    maxed._last_rand = (1 << 80) - 1
    assert maxed.next(5.0) > first


def test_error_tree_and_codes() -> None:
    codes = {
        ChatInvalid: "chat_invalid",
        ChatInvalidText: "chat_invalid_text",
        ChatForbidden: "chat_forbidden",
        ChatBlocked: "chat_blocked",
        ChatNotFound: "chat_not_found",
    }
    for cls, code in codes.items():
        err = cls("why")
        assert isinstance(err, ChatError) and isinstance(err, JalwaError)
        assert err.code == code and err.message == "why"
