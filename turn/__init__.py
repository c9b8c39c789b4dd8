"""TURN REST credentials and coturn configuration. Never imports signalling."""
