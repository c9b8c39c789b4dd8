"""What log lines may carry: bound context, never credentials (issue 12, docs/operations.md).

``Redactor`` is the last structlog processor before rendering: it masks JWTs, ``token=``
query values, 64-hex-digit signatures (receipt HMACs) and the configured secrets wherever
they appear in a line (the message, a bound value, a traceback). Chat text is never passed
to a logger in the first place (tests/integration/test_logs.py greps for it)."""

from __future__ import annotations

import re
from collections.abc import Iterable, MutableMapping
from typing import Any

JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
QUERY_TOKEN = re.compile(r"((?:token|resume)=)[^&\s\"']+")
SIGNATURE = re.compile(r"\b[0-9a-fA-F]{64}\b")
MASK = "[redacted]"


class Redactor:
    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret containing another is masked whole.
        self._secrets = sorted({s for s in secrets if len(s) >= 8}, key=len, reverse=True)

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        text = JWT.sub(MASK, text)
        text = QUERY_TOKEN.sub(lambda m: m.group(1) + MASK, text)
        return SIGNATURE.sub(MASK, text)

    def __call__(
        self, logger: Any, method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key, value in event.items():
            if isinstance(value, str):
                event[key] = self.scrub(value)
            elif not isinstance(value, int | float | bool | type(None)):
                event[key] = self.scrub(str(value))
        return event
