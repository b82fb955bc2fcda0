"""The webhook receiver (`flowrun listen`, `flowrun FLOW --listen`): WhatsApp's callbacks read
(callbacks.py), recorded in the ledger (server.py), within bounds an attacker cannot stretch
(guard.py)."""

from .guard import Limits
from .server import Counts, Receiver, running, serve

__all__ = ["Counts", "Limits", "Receiver", "running", "serve"]
