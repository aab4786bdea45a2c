"""`eci-agent pins`: the bind sources the agent holds still (see agent.pins).

`pins restore` is for boot, before the engine starts the containers it restarts by itself
(the Linux installer's eci-agent-pins.service runs it); `run` does the same when it starts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from agent import paths
from agent.pins.board import PinBoard
from agent.pins.keeper import SWEEP_EVERY

EXIT_OK = 0
EXIT_PARTIAL = 1


def board_for(runtime_dir: Path, state_dir: Path, every: float = SWEEP_EVERY) -> PinBoard:
    """Where `run` keeps its pins: mount points under the runtime folder (gone at reboot, as
    the mounts are), records under the state folder (kept, to restore them)."""
    return PinBoard(runtime_dir / "pins", state_dir / "pins", grace=max(2 * every, 2.0))


def _board(args: argparse.Namespace) -> PinBoard:
    runtime_dir = Path(args.runtime_dir) if args.runtime_dir else paths.default_runtime_dir()
    state_dir = Path(args.state_dir) if args.state_dir else paths.default_state_dir()
    return board_for(runtime_dir, state_dir)


def cmd_pins_list(args: argparse.Namespace) -> int:
    records = _board(args).records()
    if args.json:
        print(json.dumps([json.loads(r.to_json()) for r in records], indent=1))
        return EXIT_OK
    if not records:
        print("no pinned bind sources")
    for r in records:
        print(f"{r.pin}  <- {r.source} (pinned as {r.resolved})")
    return EXIT_OK


def cmd_pins_restore(args: argparse.Namespace) -> int:
    code = EXIT_OK
    for record, why in _board(args).restore():
        if why is None:
            print(f"pinned {record.pin} <- {record.source}")
        else:
            code = EXIT_PARTIAL
            print(f"not restored {record.pin} <- {record.source}: {why}", file=sys.stderr)
    return code


def add_run_arguments(run: argparse.ArgumentParser) -> None:
    run.add_argument(
        "--pin-sweep",
        type=float,
        default=SWEEP_EVERY,
        metavar="SECONDS",
        help=f"how often unused bind-source pins are released (default {SWEEP_EVERY:g})",
    )


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pins = sub.add_parser(
        "pins", help="the bind sources eci-agent holds still (list; restore after a reboot)"
    )
    pins_sub = pins.add_subparsers(dest="pins_command", required=True)
    for name, func, text in (
        ("list", cmd_pins_list, "list the pinned bind sources"),
        ("restore", cmd_pins_restore, "mount again the pins a reboot removed (before dockerd)"),
    ):
        p = pins_sub.add_parser(name, help=text)
        p.add_argument("--state-dir")
        p.add_argument("--runtime-dir")
        if name == "list":
            p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=func)
