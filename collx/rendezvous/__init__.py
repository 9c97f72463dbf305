"""Rendezvous: the Store ranks use to find each other, and the auth handshake every collx
connection starts with. Pure Python, stdlib only (the launcher imports it without _C)."""
from .auth import handshake, secret_from_env
from .memory import InProcessStore
from .store import Store
from .tcp import TCPStore, TCPStoreServer

__all__ = ["Store", "InProcessStore", "TCPStore", "TCPStoreServer", "handshake",
           "secret_from_env"]
