"""Calls: the sans-I/O call state machine, its handlers and effects, the SDP/ICE relay and
the media-server interface, and the billing hooks (how calls meet the ledger)."""
