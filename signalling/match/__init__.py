"""Matchmaking (random and nearby pairing): the room issue 11 fills. Empty for now."""
