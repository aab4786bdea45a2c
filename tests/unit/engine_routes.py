"""Every engine route as method and path (`data/engine_routes.tsv`), kept in the tree so every
checkout, CI's too, checks them all. Made from the team's engine-api notes; test_routes compares
it with them wherever they are at hand."""

from __future__ import annotations

import csv
from pathlib import Path

ROUTE_LIST = Path(__file__).parent / "data" / "engine_routes.tsv"


def route_list() -> list[tuple[str, str, str]]:
    """(list, method, path) rows: the list is the notes' file it came from, without `.tsv`."""
    with ROUTE_LIST.open(newline="") as f:
        lines = [line for line in f if not line.startswith("#")]
    return [(r["list"], r["method"], r["path"]) for r in csv.DictReader(lines, delimiter="\t")]
