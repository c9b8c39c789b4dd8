"""Many processes as one service: the node bus between hub processes (DESIGN §3)."""
