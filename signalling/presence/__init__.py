"""Presence: the store (memory and Redis), status fan-out to watchers, the watch handlers."""
