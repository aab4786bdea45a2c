"""The version is written once, in `agent/__init__.py`; the installed metadata is built from it
and the agent reports it without asking the metadata (which costs ~0.5 MiB of RSS)."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import agent
from agent.control.wiring import agent_version


def test_the_reported_version_is_the_installed_one() -> None:
    assert agent_version() == agent.__version__ == importlib.metadata.version("eci-agent")


def test_the_run_path_does_not_load_the_metadata_machinery() -> None:
    code = (
        "import sys, agent.cli.main, agent.control.wiring, agent.proxy.server;"
        "print('importlib.metadata' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
