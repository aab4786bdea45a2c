"""The Linux installer's systemd units: their command lines are ones eci-agent accepts, and
the pins are back before the engine starts (see agent.pins)."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

import pytest

from agent.cli.main import build_parser

UNITS = Path(__file__).resolve().parents[2] / "installers" / "linux" / "systemd"


def _unit(name: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, comment_prefixes=("#", ";"))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((UNITS / name).read_text())
    return parser


@pytest.mark.parametrize("name", sorted(p.name for p in UNITS.glob("*.service")))
def test_each_service_runs_an_eci_agent_command_line_it_accepts(name):
    argv = shlex.split(_unit(name)["Service"]["ExecStart"])
    assert argv[0] == "/usr/bin/eci-agent"
    build_parser().parse_args(argv[1:])  # SystemExit (argparse's error) fails the test


def test_pins_are_restored_before_the_engine_from_the_agents_own_folders():
    pins = _unit("eci-agent-pins.service")
    assert "docker.service" in pins["Unit"]["Before"].split()
    assert pins["Service"]["Type"] == "oneshot"
    restore = build_parser().parse_args(shlex.split(pins["Service"]["ExecStart"])[1:])
    run = build_parser().parse_args(
        shlex.split(_unit("eci-agent.service")["Service"]["ExecStart"])[1:]
    )
    assert (restore.runtime_dir, restore.state_dir) == (run.runtime_dir, run.state_dir)


def test_the_agent_shares_the_hosts_mount_namespace():
    """Its pins are mounts the engine must see."""
    service = _unit("eci-agent.service")["Service"]
    for key in ("PrivateMounts", "PrivateTmp", "ProtectSystem", "ProtectHome", "MountFlags"):
        assert key not in service, key
