"""Operations: bans, the admin figures, per-node figures, Prometheus metrics (issue 12)."""
