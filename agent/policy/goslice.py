"""`GoArray`: a decoded JSON array as Go holds it (see `agent.policy.gojson`).

A module of its own because it subclasses `list`, which mypyc cannot compile: `gojson` is
compiled with the proxy's hot modules (`agent.native`), this stays plain Python.
"""

from __future__ import annotations

from typing import Any


class GoArray(list[Any]):
    """A decoded JSON array as a Go slice: the visible elements, and what its backing array
    still holds past them (`hidden`, up to the capacity Go's decoder gave it)."""

    def __init__(self, visible: list[Any], hidden: list[Any] | None = None) -> None:
        super().__init__(visible)
        self.hidden: list[Any] = hidden if hidden is not None else []
