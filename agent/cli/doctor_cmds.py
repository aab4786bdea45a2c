"""`eci-agent doctor`: checks that eci-agent is the only way to the engine, each with its fix.

One line per finding (`ok`, `warn`, `FAIL`) and the fix under it; `--json` for scripts.
Exit status 0 when nothing failed, 1 otherwise. Run it as root: it reads /proc and sockets
other users cannot.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

EXIT_OK = 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from agent.cli.control_cmds import default_control_socket
    from agent.cli.main import engine_path
    from agent.doctor.checks import diagnose, exit_status
    from agent.doctor.gather import gather

    engine = engine_path(args.engine) if args.engine else None
    facts = gather(
        engine=engine,
        control=args.control or default_control_socket(),
        settings=args.settings,
    )
    findings = diagnose(facts)
    if args.json:
        print(
            json.dumps(
                {
                    "ok": exit_status(findings) == EXIT_OK,
                    "engine": facts.engine.socket,
                    "control": facts.agent.control if facts.agent else None,
                    "settings": facts.settings.path if facts.settings else None,
                    "findings": [f.to_dict() for f in findings],
                },
                indent=2,
            )
        )
    else:
        if os.geteuid() != 0:
            print("note: not root, so some facts (other users' sockets, /proc) may be missing")
        for finding in findings:
            label = "FAIL" if finding.status == "fail" else finding.status
            print(f"{label:<5} {finding.check}: {finding.message}")
            if finding.fix and finding.status != "ok":
                print(f"      fix: {finding.fix}")
    return exit_status(findings)


def add_parsers(sub: Any) -> None:
    """Register `doctor` on the main parser's subcommands."""
    doctor = sub.add_parser(
        "doctor",
        help="check that eci-agent is the only way to the engine (socket modes, groups, TCP, "
        "settings file, isolation), with fixes",
    )
    doctor.add_argument("--json", action="store_true", help="machine-readable findings")
    doctor.add_argument(
        "--engine",
        metavar="PATH",
        help="the real engine socket (default: the running agent's, else /var/run/docker.sock)",
    )
    doctor.add_argument("--control", metavar="PATH", help="the agent's control socket")
    doctor.add_argument(
        "--settings",
        metavar="FILE",
        help="the admin-settings.json to check (default: the running agent's)",
    )
    doctor.set_defaults(func=cmd_doctor)
