"""Signed recharge receipts from the payment provider.

The provider (or our payment backend on its behalf) signs the raw JSON body with
HMAC-SHA256 under a shared secret and sends the hex digest in a header, as the common
Indian gateways do for their webhooks. The amount credited is the one inside the signed
body: never a figure the client made up.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

import msgspec

from .errors import BadReceipt

Ident = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@-]+$")]


class Receipt(msgspec.Struct, forbid_unknown_fields=False):
    provider: Ident
    txn_id: Ident
    user_id: Ident
    amount: Annotated[int, msgspec.Meta(gt=0)]


_decoder = msgspec.json.Decoder(Receipt)


def sign(secret: bytes, body: bytes) -> str:
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(secret: bytes, body: bytes, signature: str) -> Receipt:
    """The receipt, if ``signature`` is the body's HMAC under ``secret``; BadReceipt if not."""
    expected = sign(secret, body)
    if not hmac.compare_digest(expected, signature.strip().lower()):
        raise BadReceipt("receipt signature does not match")
    try:
        return _decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise BadReceipt(f"malformed receipt: {exc}") from exc
