"""`eci-agent features`: which ECI features this machine and the settings give, by version.

With the agent running it asks the control API (`GET /v1/features`), which answers from the
engine the agent is in front of and the settings in force. Offline, `--settings FILE` and
`--docker-desktop VERSION` evaluate a settings file for a given Docker Desktop, without an
agent or an engine: the way to check a file before deploying it to a fleet of Docker Desktops.

Exit status: 0; 1 when the report has warnings (something the settings ask for would not
apply, or the machine is not protected); 2 for a usage problem (no such file); 3 when the
agent cannot be asked.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent import paths

EXIT_OK = 0
EXIT_WARNINGS = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3


def _desktop_version(text: str) -> tuple[int, int, int]:
    from agent.control.features import parse_version

    version = parse_version(text)
    if version is None:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a Docker Desktop version like 4.36")
    return version


def offline_report(args: argparse.Namespace) -> dict[str, Any] | int:
    """Evaluate a settings file for an assumed platform; an exit status when it cannot."""
    from agent.control.features import (
        UNKNOWN,
        Platform,
        assumed_desktop,
        evaluate,
        load_default_table,
    )
    from agent.settings.loader import Missing, Refused, load_settings

    path = Path(args.settings) if args.settings else paths.default_settings_path()
    result = load_settings(path, strict_modes=False)
    if isinstance(result, Missing):
        print(f"eci-agent features: {path}: no such file", file=sys.stderr)
        return EXIT_USAGE
    if isinstance(result, Refused):
        print(f"eci-agent features: {result.reason}", file=sys.stderr)
        return EXIT_WARNINGS
    if args.docker_desktop is not None:
        platform = assumed_desktop(args.docker_desktop, wsl2=args.wsl2)
    else:
        platform = Platform(kind=UNKNOWN, assumed=True)
    return evaluate(load_default_table(), result.settings, platform=platform).to_dict()


def _desktop_column(row: Mapping[str, Any]) -> str:
    desk = row.get("dockerDesktop") or {}
    support = desk.get("support")
    if support == "since":
        text = f"since {desk.get('since')}" + ("" if desk.get("exact", True) else "?")
        if desk.get("notOn"):
            text += " (not " + ",".join(desk["notOn"]) + ")"
    else:
        text = str(support or "")
    available = desk.get("available")
    if available is True:
        text += " yes"
    elif available is False:
        text += " NO"
    return text


def print_report(doc: Mapping[str, Any]) -> None:
    platform = doc.get("platform") or {}
    kind = platform.get("kind")
    if kind == "docker-desktop":
        where = f"Docker Desktop {platform.get('dockerDesktopVersion') or '(version unknown)'}"
        if platform.get("wsl2"):
            where += " (WSL 2)"
    elif kind == "docker-engine":
        where = platform.get("name") or "Docker Engine (no platform name)"
    else:
        where = "any engine" if platform.get("assumed") else "unknown (the engine did not answer)"
    if platform.get("engineVersion"):
        where += f", engine {platform['engineVersion']} (API {platform.get('apiVersion')})"
    if platform.get("os") and platform.get("arch"):
        where += f", {platform['os']}/{platform['arch']}"
    if platform.get("assumed"):
        where += " [assumed, not asked]"
    print(f"Platform: {where}")
    settings = doc.get("settings") or {}
    source = settings.get("source") or "built-in default (no settings file)"
    sha = (settings.get("sha256") or "")[:12]
    print(f"Settings: {source}" + (f" (sha256 {sha})" if sha else ""))
    isolation = doc.get("isolation") or {}
    if isolation.get("summary"):
        print(isolation["summary"].splitlines()[0])
    if doc.get("mode"):
        print(f"Mode: {doc['mode']}")
    minimum = doc.get("minimumDockerDesktop")
    if minimum:
        print(f"On Docker Desktop these settings need {minimum} or later")
    warnings = doc.get("warnings") or []
    if warnings:
        print("Warnings:")
        for w in warnings:
            where = f" [{w['path']}]" if w.get("path") else ""
            print(f"  {w.get('severity', 'warning')}: {w.get('message')}{where}")
    print("Features (* = the settings use it; eci-agent here; Docker Desktop):")
    for row in doc.get("features") or []:
        mark = "*" if row.get("used") else " "
        if row.get("kind") == "service":
            line = f"  {mark} {row.get('state', ''):<14} {'':<22} {row.get('name')}"
            detail = row.get("detail")
            print(line + (f": {detail}" if detail else ""))
            continue
        print(
            f"  {mark} {row.get('state', ''):<14} {_desktop_column(row):<22} {row.get('name')}: "
            f"{row.get('title')}"
        )


def cmd_features(args: argparse.Namespace) -> int:
    if args.settings is not None or args.docker_desktop is not None:
        if args.control is not None:
            print(
                "eci-agent features: --control asks the agent; --settings/--docker-desktop "
                "evaluate a file without it: give one or the other",
                file=sys.stderr,
            )
            return EXIT_USAGE
        result = offline_report(args)
        if isinstance(result, int):
            return result
        doc = result
    else:
        if args.wsl2:
            print("eci-agent features: --wsl2 goes with --docker-desktop", file=sys.stderr)
            return EXIT_USAGE
        from agent.cli.control_cmds import default_control_socket
        from agent.control.client import ControlClient, ControlError, Refused

        try:
            doc = ControlClient(args.control or default_control_socket()).get("/v1/features")
        except ControlError as err:
            print(f"eci-agent features: {err}", file=sys.stderr)
            return EXIT_WARNINGS if isinstance(err, Refused) else EXIT_UNAVAILABLE
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print_report(doc)
    warned = any(w.get("severity") == "warning" for w in doc.get("warnings") or [])
    return EXIT_WARNINGS if warned else EXIT_OK


def add_parsers(sub: Any) -> None:
    """Register `features` on the main parser's subcommands."""
    features = sub.add_parser(
        "features",
        help="which ECI features this machine and the settings give, and which would not "
        "apply on an older Docker Desktop",
    )
    features.add_argument("--json", action="store_true", help="the control API's JSON document")
    features.add_argument("--control", metavar="PATH", help="the agent's control socket")
    features.add_argument(
        "--settings",
        metavar="FILE",
        help="evaluate this admin-settings.json without an agent (offline)",
    )
    features.add_argument(
        "--docker-desktop",
        type=_desktop_version,
        metavar="VERSION",
        help="offline: evaluate for this Docker Desktop version (e.g. 4.35)",
    )
    features.add_argument(
        "--wsl2", action="store_true", help="offline: Docker Desktop on its WSL 2 backend"
    )
    features.set_defaults(func=cmd_features)
