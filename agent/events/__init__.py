"""The agent's event record: what was denied, reloaded or refused, kept in SQLite."""

from agent.events.model import Event, EventFormatError, Kind, PeerLike, denial
from agent.events.store import EventStore, EventStoreError, Retention

__all__ = [
    "Event",
    "EventFormatError",
    "EventStore",
    "EventStoreError",
    "Kind",
    "PeerLike",
    "Retention",
    "denial",
]
