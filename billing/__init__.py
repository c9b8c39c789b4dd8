"""Wallet ledger and per-minute call billing (docs: DESIGN §5). Never imports signalling."""
