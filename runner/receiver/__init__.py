"""The webhook receiver (`flowrun listen`, `flowrun FLOW --listen`): WhatsApp's callbacks read
(callbacks.py) and recorded in the ledger (server.py)."""

from .server import Counts, Receiver, running, serve

__all__ = ["Counts", "Receiver", "running", "serve"]
