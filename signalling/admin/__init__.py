"""Admin stats, bans, metrics and health: the room issue 12 fills. Empty for now."""
