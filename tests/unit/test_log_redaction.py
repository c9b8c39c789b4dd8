"""The log redactor masks credentials wherever they sit in a line."""

from __future__ import annotations

from signalling.logs import MASK, Redactor

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLWhlcmU"


def test_tokens_signatures_and_secrets_are_masked_in_every_field() -> None:
    redact = Redactor(["super-secret-value", "short"])
    event = redact(
        None,
        "info",
        {
            "event": f"GET /v1/ws?token={JWT}&last_seq=3 failed",
            "header": f"Bearer {JWT}",
            "exception": "ValueError: bad super-secret-value",
            "signature": "ab" * 32,
            "resume": "?resume=r_abcdef123456",
            "count": 3,
            "other": {"nested": JWT},
        },
    )
    assert event["event"] == f"GET /v1/ws?token={MASK}&last_seq=3 failed"
    assert event["header"] == f"Bearer {MASK}"
    assert event["exception"] == f"ValueError: bad {MASK}"
    assert event["signature"] == MASK
    assert event["resume"] == f"?resume={MASK}"
    assert event["count"] == 3
    assert JWT not in event["other"]


def test_ordinary_lines_pass_unchanged() -> None:
    line = {"event": "call ended", "call_id": "c_WrgjcuyS2hDAhR4Z", "user_id": "alice"}
    assert Redactor(["super-secret-value"])(None, "info", dict(line)) == line
