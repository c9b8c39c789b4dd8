"""Billing's exception tree; the signalling edge maps codes to protocol errors / HTTP."""

from __future__ import annotations


class BillingError(Exception):
    code = "billing_error"
    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)

    @property
    def message(self) -> str:
        return str(self.args[0])


class InvalidAmount(BillingError):
    code = "invalid_amount"


class InsufficientFunds(BillingError):
    code = "insufficient_funds"
    status = 402


class IdempotencyConflict(BillingError):
    """The key was used before for a different request."""

    code = "idempotency_conflict"
    status = 409


class NotFound(BillingError):
    code = "not_found"
    status = 404


class InvalidState(BillingError):
    """E.g. deciding a withdrawal that was already decided."""

    code = "invalid_state"
    status = 409


class BadReceipt(BillingError):
    code = "bad_receipt"
    status = 400
