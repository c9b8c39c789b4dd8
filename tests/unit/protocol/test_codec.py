"""Frames an attacker sends: each gets the documented error, with its id when it has one."""

from __future__ import annotations

import pytest

from signalling.protocol import DecodeFailure, ErrorCode, decode, peek_id

CHAT = '"type":"chat.send","to":"bob","client_msg_id":"c1"'


def failure(frame: str | bytes) -> tuple[str, str | None]:
    with pytest.raises(DecodeFailure) as caught:
        decode(frame)
    return caught.value.code, caught.value.request_id


@pytest.mark.parametrize("depth", [1_000, 2_000, 100_000])
def test_deep_nesting_is_invalid_message_with_the_id(depth: int) -> None:
    """RecursionError in the decoder used to drop the session with no reply."""
    nested = "[" * depth + "]" * depth
    assert failure('{"id":"d1",' + CHAT + ',"text":"hi","x":' + nested + "}") == (
        ErrorCode.INVALID_MESSAGE,
        "d1",
    )
    # The id after the deep part, and an "id" inside it that is not the frame's.
    inner = "[" * depth + '{"id":"inner"}' + "]" * depth
    assert failure('{"x":' + inner + ',"type":"chat.send","id":"d2"}') == (
        ErrorCode.INVALID_MESSAGE,
        "d2",
    )
    assert failure('{"x":' + nested + "}") == (ErrorCode.INVALID_MESSAGE, None)
    assert peek_id('{"id":"d3","x":' + nested + "}") == "d3"


def test_lone_surrogate_is_invalid_message_with_the_id() -> None:
    """It used to be bad_json without the id (463 ids unanswered in the probe)."""
    assert failure('{"id":"s1",' + CHAT + ',"text":"\\ud800"}') == (
        ErrorCode.INVALID_MESSAGE,
        "s1",
    )
    assert failure(('{"id":"s2",' + CHAT + ',"text":"\\udfff!"}').encode()) == (
        ErrorCode.INVALID_MESSAGE,
        "s2",
    )
    # An id that is itself a lone surrogate cannot be sent back: no id, still one error.
    assert failure('{"id":"\\ud800",' + CHAT + ',"text":"x"}') == (ErrorCode.INVALID_MESSAGE, None)
    # A surrogate pair is a valid character.
    message = decode('{"id":"s3",' + CHAT + ',"text":"\\ud83d\\ude00"}')
    assert message.id == "s3"


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("hello", ErrorCode.BAD_JSON),
        ("[1,2]", ErrorCode.BAD_JSON),
        ('{"type":"chat.send","id":"t",', ErrorCode.BAD_JSON),
        ("\u0000", ErrorCode.BAD_JSON),
        ('{"type":"x.y","id":"a\\"b"}', ErrorCode.UNKNOWN_TYPE),
    ],
)
def test_other_garbage_keeps_its_codes(frame: str, code: ErrorCode) -> None:
    assert failure(frame)[0] == code


def test_a_truncated_deep_frame_has_no_id_to_answer() -> None:
    """Found by the long fuzz run: the flat scan took the id of a deep frame cut short."""
    deep = '{"type":null,"id":"t1","deep":' + "[" * 2000
    assert failure(deep) == (ErrorCode.INVALID_MESSAGE, None)
    assert peek_id(deep) is None
    assert peek_id('{"id":"t2","x":' + "[" * 2000 + "]" * 2000 + "} trailing") is None
    assert peek_id('{"id":"t3","x":' + "[" * 2000 + "}" * 2000 + "}") is None  # mismatched
