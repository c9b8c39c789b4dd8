"""The signalling exception tree. Codes become protocol errors / HTTP statuses at the edge."""

from __future__ import annotations


class JalwaError(Exception):
    """Base of every error the signalling package raises on purpose."""

    code = "internal"  # codes sent to clients are protocol.ErrorCode values (docs §6)

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0])


class ConfigError(JalwaError):
    code = "config"


class AuthError(JalwaError):
    """A token that is missing, malformed, badly signed, expired or has bad claims."""

    code = "token_invalid"


class CallError(JalwaError):
    """A call operation refused: the code says why (callee_offline, invalid_state, ...)."""

    code = "invalid_state"
