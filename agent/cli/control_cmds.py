"""`eci-agent status` / `eci-agent events`, and the `run` flags for the agent's services.

The admin's commands only talk to the running agent's control socket: they never open the
event store or the settings file themselves, so they show exactly what the agent enforces.
"""

from __future__ import annotations

import argparse
import grp
import json
import logging
import os
import sys
import urllib.parse
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import paths
from agent.events.model import Event, printable
from agent.events.store import Retention

if TYPE_CHECKING:
    from agent.control.client import ControlClient, ControlError
    from agent.control.wiring import AgentServices
    from agent.settings.state import SettingsState

log = logging.getLogger("eci_agent")

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_UNAVAILABLE = 3

CONTROL_SOCKET = "control.sock"
SYSTEM_CONTROL_SOCKET = Path("/run/eci-agent") / CONTROL_SOCKET


def default_control_socket() -> str:
    """Where `eci-agent run` puts the control socket by default, as seen by this user.

    The agent runs as root, so its socket is under /run/eci-agent; a non-root admin who runs
    the agent as themselves (development) finds it in their own runtime dir.
    """
    if (
        paths.default_runtime_dir() == SYSTEM_CONTROL_SOCKET.parent
        or SYSTEM_CONTROL_SOCKET.exists()
    ):
        return str(SYSTEM_CONTROL_SOCKET)
    return str(paths.default_runtime_dir() / CONTROL_SOCKET)


# -- run -------------------------------------------------------------------------------------


def _nonnegative_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not number >= 0:
        raise argparse.ArgumentTypeError("must be 0 (keep forever) or more")
    return number


def _nonnegative_int(value: str) -> int:
    try:
        number = int(value, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 0:
        raise argparse.ArgumentTypeError("must be 0 (no limit) or more")
    return number


def _limit(value: str) -> int:
    number = _nonnegative_int(value)
    if not 1 <= number <= 1000:
        raise argparse.ArgumentTypeError("must be between 1 and 1000")
    return number


def add_run_arguments(run: argparse.ArgumentParser) -> None:
    """`--control`, `--control-group`, `--events-retention-days`, `--events-max-rows`."""
    run.add_argument(
        "--control",
        metavar="PATH",
        help=f"the control API socket (default: {CONTROL_SOCKET} in the runtime dir)",
    )
    run.add_argument(
        "--control-group",
        metavar="GROUP",
        help="a group whose members may read the agent's status and events (socket mode 660); "
        "without it, only root may (mode 600)",
    )
    defaults = Retention()
    run.add_argument(
        "--events-retention-days",
        type=_nonnegative_float,
        default=defaults.max_age_days,
        metavar="DAYS",
        help=f"drop events older than this (default {defaults.max_age_days:g}; 0: keep)",
    )
    run.add_argument(
        "--events-max-rows",
        type=_nonnegative_int,
        default=defaults.max_rows,
        metavar="N",
        help=f"keep at most this many events, dropping the oldest (default {defaults.max_rows}; "
        "0: no limit)",
    )


def retention_of(args: argparse.Namespace) -> Retention:
    days = args.events_retention_days
    rows = args.events_max_rows
    return Retention(max_age_days=days or None, max_rows=rows or None)


def control_group_id(name: str | None) -> int | None:
    if name is None:
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        if name.isdigit():
            return int(name)
        raise SystemExit(f"eci-agent run: no such group {name!r} (--control-group)") from None


def open_services(
    args: argparse.Namespace,
    state: SettingsState,
    *,
    state_dir: Path,
    runtime_dir: Path,
    settings_path: Path,
    listeners: Mapping[str, str],
) -> AgentServices:
    """The event store and control API for `eci-agent run` (an `AgentServices`, not started)."""
    from agent.control.wiring import AgentServices, ServicesConfig
    from agent.events.store import EventStoreError

    control = os.path.abspath(args.control) if args.control else str(runtime_dir / CONTROL_SOCKET)
    if control in listeners.values() or control == args.engine:
        raise SystemExit("eci-agent run: --control must be a socket of its own")
    config = ServicesConfig(
        state_dir=state_dir,
        control_path=control,
        engine_socket=args.engine,
        settings_path=settings_path,
        listeners=dict(listeners),
        control_group=control_group_id(args.control_group),
        retention=retention_of(args),
    )
    try:
        return AgentServices(config, state)
    except EventStoreError as err:
        raise SystemExit(f"eci-agent run: {err}") from None


# -- the admin's commands --------------------------------------------------------------------


def _client(args: argparse.Namespace) -> ControlClient:
    # The admin's commands only: `run` never loads the client (http.client, email: ~1.5 MiB).
    from agent.control.client import ControlClient

    return ControlClient(args.control or default_control_socket())


def _fail(command: str, err: ControlError) -> int:
    from agent.control.client import Refused

    print(f"eci-agent {command}: {err}", file=sys.stderr)
    return EXIT_REFUSED if isinstance(err, Refused) else EXIT_UNAVAILABLE


def print_status(doc: Mapping[str, Any]) -> None:
    """The status as lines for people; every line passes `printable` (container and image
    names, paths and errors can come from clients or files)."""

    def say(line: str) -> None:
        print(printable(line))

    eci = doc.get("eci") or {}
    settings = doc.get("settings") or {}
    engine = doc.get("engine") or {}
    events = doc.get("events") or {}
    state = "on" if doc.get("enforcing") else "off"
    if doc.get("locked"):
        lock = "locked by the administrator"
    elif eci.get("userChoice") is not None:
        lock = "not locked; switched by the user"
    else:
        lock = "not locked (users may switch it)"
    if doc.get("audit"):
        say("!!! AUDIT MODE: this machine is NOT protected. eci-agent only records what it")
        say("!!! would deny (`eci-agent events --kind would-deny`, `eci-agent suggest`).")
        state = "audit only"
    say(f"Enhanced Container Isolation: {state} ({lock})")
    if settings.get("builtinDefault"):
        say(f"  settings: built-in default (no file at {settings.get('path')})")
    else:
        sha = (settings.get("sha256") or "")[:12]
        say(f"  settings: {settings.get('source')} (sha256 {sha})")
    if settings.get("lastReload"):
        say(f"  last reload: {settings['lastReload']}")
    if doc.get("settingsError"):
        say(f"  settings error: {doc['settingsError']}")
    if engine.get("reachable"):
        say(
            f"  engine: {engine.get('socket')}: Docker Engine {engine.get('version')} "
            f"(API {engine.get('apiVersion')})"
        )
    else:
        say(f"  engine: {engine.get('socket')}: NOT REACHABLE: {engine.get('error')}")
    for name, path in (doc.get("listeners") or {}).items():
        say(f"  {name} socket: {path}")
    dropped = events.get("dropped") or 0
    line = f"  events: {events.get('path')}, last id {events.get('lastId')}"
    say(line + (f", {dropped} dropped" if dropped else ""))
    isolation = doc.get("isolation") or {}
    for line in str(isolation.get("text") or isolation.get("error") or "").splitlines():
        say(f"  {line}")
    for c in isolation.get("refusedToStart") or []:
        say(
            f"  made before enforcement, refused on start: {c['name']} ({c['image']}): "
            f"{', '.join(c['refused'])}; fix: {c['fix']}"
        )
    for item in doc.get("needsRepull") or []:
        say(f"  needs re-pull: {item['image']}: fix: {item['fix']}")
    agent = doc.get("agent") or {}
    code = (agent.get("code") or {}).get("summary")
    say(
        f"  agent: eci-agent {agent.get('version')}, pid {agent.get('pid')}"
        + (f"; proxy code: {code}" if code else "")
    )


def cmd_status(args: argparse.Namespace) -> int:
    from agent.control.client import ControlError

    try:
        doc = _client(args).get("/v1/status")
    except ControlError as err:
        return _fail("status", err)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print_status(doc)
    return EXIT_OK


def format_event(event: Event) -> str:
    """One human line: `#id time kind [rule] who request: message`."""
    parts = [f"#{event.id}", event.to_dict()["time"], event.kind]
    if event.rule:
        parts.append(f"[{event.rule}]")
    if event.uid is not None:
        who = f"uid={event.uid}"
        if event.pid is not None:
            who += f" pid={event.pid}"
        if event.listener:
            who += f" via {event.listener}"
        parts.append(who)
    if event.method:
        parts.append(f"{event.method} {event.path}")
    if event.image:
        parts.append(f"image={event.image}")
    text = " ".join(parts)
    # A client's own words (its path, image name) must not forge or hide lines here.
    return printable(f"{text}: {event.message}" if event.message else text)


def _route(args: argparse.Namespace, **extra: Any) -> str:
    query: list[tuple[str, str]] = []
    for kind in args.kind or ():
        query.append(("kind", kind))
    if args.since:
        query.append(("since", args.since))
    for key, value in extra.items():
        if value is not None:
            query.append((key, str(value)))
    return "/v1/events" + ("?" + urllib.parse.urlencode(query) if query else "")


class _Output:
    def __init__(self, args: argparse.Namespace) -> None:
        self.json = args.json
        self.syslog = None
        if args.syslog is not None:
            from agent.events.syslog import SyslogSink, parse_address

            self.syslog = SyslogSink(parse_address(args.syslog))

    def emit(self, events: Iterable[Event]) -> None:
        for event in events:
            if self.syslog is not None:
                self.syslog.send(event)
            elif self.json:
                print(event.to_json(), flush=True)
            else:
                print(format_event(event), flush=True)


def cmd_events(args: argparse.Namespace) -> int:
    from agent.control.client import ControlError

    client = _client(args)
    try:
        out = _Output(args)
    except (OSError, ValueError) as err:
        print(f"eci-agent events: syslog {args.syslog}: {err}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    try:
        if args.all or args.after is not None:
            cursor = args.after
            while True:
                page = client.get(_route(args, after=cursor, limit=1000))
                out.emit(Event.from_dict(d) for d in page["events"])
                cursor = page["lastId"]
                if not page["more"]:
                    break
        else:
            page = client.get(_route(args, limit=args.limit, newest=1))
            out.emit(Event.from_dict(d) for d in page["events"])
            cursor = page["lastId"]
        if args.follow:
            after = cursor if cursor is not None else 0
            for doc in client.lines(_route(args, follow=1, after=after)):
                out.emit([Event.from_dict(doc)])
    except ControlError as err:
        return _fail("events", err)
    except OSError as err:
        print(f"eci-agent events: {err}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        return EXIT_OK
    return EXIT_OK


def cmd_suggest(args: argparse.Namespace) -> int:
    from agent.control.client import ControlError
    from agent.events.suggest import suggest

    client = _client(args)
    docs: list[dict[str, Any]] = []
    try:
        cursor: int | None = None
        while True:
            page = client.get(
                "/v1/events?kind=would-deny&limit=1000"
                + (f"&after={cursor}" if cursor is not None else "")
            )
            docs.extend(page["events"])
            cursor = page["lastId"]
            if not page["more"] or cursor is None:
                break
    except ControlError as err:
        return _fail("suggest", err)
    result = suggest(docs)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return EXIT_OK
    if result.events == 0:
        print("no would-deny events recorded: turn audit mode on (eciAgent.auditMode) and let")
        print("real work run through the agent first")
        return EXIT_OK
    print(f"From {result.events} would-deny event(s). Review, then merge into the settings file:")
    print(json.dumps(result.as_settings(), indent=2))
    for entry, count in sorted(result.deny_entries_hit.items()):
        print(f"deny-list entry {entry!r} blocked {count} request(s): remove or narrow it")
    for rule, count in sorted(result.other.items()):
        print(f"{count} request(s) refused by {rule!r}: no settings entry can allow these")
    return EXIT_OK


def add_parsers(sub: Any) -> None:
    """Register `status`, `events` and `suggest` on the main parser's subcommands."""
    suggest_cmd = sub.add_parser(
        "suggest", help="turn audit mode's would-deny events into image/command list entries"
    )
    suggest_cmd.add_argument("--json", action="store_true", help="machine-readable proposal")
    suggest_cmd.add_argument("--control", metavar="PATH", help="the agent's control socket")
    suggest_cmd.set_defaults(func=cmd_suggest)
    status = sub.add_parser("status", help="what the running agent enforces, and its health")
    status.add_argument("--json", action="store_true", help="the control API's JSON document")
    status.add_argument("--control", metavar="PATH", help="the agent's control socket")
    status.set_defaults(func=cmd_status)

    events = sub.add_parser("events", help="the running agent's events (denials, reloads, ...)")
    events.add_argument("--json", action="store_true", help="JSON lines, one event per line")
    events.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    events.add_argument(
        "--limit",
        type=_limit,
        default=20,
        metavar="N",
        help="the newest N events (default 20, at most 1000)",
    )
    events.add_argument(
        "--after", type=int, metavar="ID", help="every event after this id (paging on)"
    )
    events.add_argument("--all", action="store_true", help="every stored event (an export)")
    events.add_argument(
        "--kind", action="append", metavar="KIND", help="only this kind (repeatable)"
    )
    events.add_argument("--since", metavar="TIME", help="only events at or after (RFC 3339)")
    events.add_argument(
        "--syslog",
        nargs="?",
        const="/dev/log",
        metavar="ADDRESS",
        help="send the events to syslog (RFC 5424) instead of printing them: a socket path "
        "(default /dev/log) or udp://host:port",
    )
    events.add_argument("--control", metavar="PATH", help="the agent's control socket")
    events.set_defaults(func=cmd_events)
