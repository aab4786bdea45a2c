"""Volume-driver plugins (session 7, after the third review's lead): a managed plugin made with
`docker plugin create` answers the engine's `VolumeDriver.Mount` with a path, which the engine
joins to the plugin's rootfs and cleans (`..` climbs out of it), and mounts into containers.
The plugin here (tests/e2e/data/volume_plugin.py, on the host's own python3 copied into its
rootfs) answers with a path that climbs to the engine socket's folder; the ENGINE is asked
what the container found there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.engine,
    pytest.mark.skipif(not os.path.exists("/usr/bin/python3"), reason="needs /usr/bin/python3"),
]

HERE = Path(__file__).resolve().parent


def _python_rootfs(root: Path) -> None:
    """/usr/bin/python3 with its libraries and standard library, copied into `root`."""
    py = Path("/usr/bin/python3").resolve()
    libs = subprocess.run(["ldd", str(py)], capture_output=True, text=True, check=True).stdout
    files = [str(py)]
    for line in libs.splitlines():
        for part in line.split():
            if part.startswith("/"):
                files.append(part)
    for f in files:
        dest = root / f.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(f), dest)
    version = py.name  # e.g. python3.11
    stdlib = Path("/usr/lib") / version
    shutil.copytree(stdlib, root / "usr" / "lib" / version, symlinks=True,
                    ignore=shutil.ignore_patterns("test", "tests", "idlelib", "tkinter",
                                                  "__pycache__", "site-packages", "dist-packages"))  # fmt: skip
    (root / "usr" / "bin").mkdir(parents=True, exist_ok=True)
    if not (root / "usr" / "bin" / "python3").exists():
        os.symlink(version, root / "usr" / "bin" / "python3")
    for d in ("tmp", "run/docker/plugins"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy(HERE / "data" / "volume_plugin.py", root / "plugin.py")


def _volume_plugin(tmp_path: Path, answer: str) -> Path:
    """A plugin folder (`docker plugin create NAME DIR`): the volume driver above, answering
    every Mount with `answer`."""
    plugin_dir = tmp_path / "plugin"
    _python_rootfs(plugin_dir / "rootfs")
    config = {
        "description": "review volume plugin",
        "documentation": "-",
        "entrypoint": ["/usr/bin/python3", "-S", "/plugin.py"],
        "env": [{"name": "ANSWER", "settable": ["value"], "value": answer}],
        "interface": {"types": ["docker.volumedriver/1.0"], "socket": "review.sock"},
        "network": {"type": "none"},
    }
    (plugin_dir / "config.json").write_text(json.dumps(config))
    return plugin_dir


def test_a_volume_plugin_cannot_hand_a_container_the_socket_folder(
    via_agent: Any, direct: Any, stack: Any, name: str, tmp_path: Path
) -> None:
    folder = os.path.dirname(stack.engine_socket)
    climb = "/.." * 12 + folder  # joined to the plugin's rootfs, then cleaned: `folder`
    plugin_dir = _volume_plugin(tmp_path, climb)
    plugin = f"review7d-{name}:latest"
    volume = name + "-vol"
    box = name + "-box"
    try:
        via_agent("plugin", "create", plugin, str(plugin_dir), check=True)
        enabled = via_agent("plugin", "enable", "--timeout", "20", plugin)
        if enabled.returncode != 0:
            # refused: nothing of it may run
            assert "enhanced container isolation" in enabled.stderr, enabled.stderr
            state = direct("plugin", "inspect", "-f", "{{.Enabled}}", plugin, check=True)
            assert state.stdout.strip() == "false"
            return
        via_agent("volume", "create", "-d", plugin, volume, check=True)
        r = via_agent("run", "--name", box, "--network", "none", "-v", f"{volume}:/x",
                      stack.images["busybox"], "ls", "-a", "/x")  # fmt: skip
        seen = direct("logs", box).stdout
        assert "docker.sock" not in seen, (
            f"BYPASS: a container using volume {volume} of plugin {plugin} sees the engine "
            f"socket's folder {folder}: {seen!r} (run exit {r.returncode}: {r.stderr.strip()})"
        )
    finally:
        direct("rm", "-f", box)
        direct("volume", "rm", "-f", volume)
        direct("plugin", "rm", "-f", plugin)


def test_the_doctor_names_a_volume_plugin_enabled_without_the_agent(
    agent: Any, direct: Any, stack: Any, name: str, tmp_path: Path
) -> None:
    """One enabled directly on the engine (as before enforcement): its volumes go unjudged,
    and `eci-agent doctor` says so."""
    import sys

    def finding() -> dict[str, Any]:
        r = subprocess.run(
            [sys.executable, "-m", "agent", "doctor", "--json", "--engine", stack.engine_socket,
             "--control", agent.control, "--settings", str(agent.settings_path)],
            capture_output=True, text=True, timeout=120, cwd=HERE.parents[1],
        )  # fmt: skip
        (only,) = [f for f in json.loads(r.stdout)["findings"] if f["check"] == "volume-plugins"]
        return dict(only)

    assert finding()["status"] == "ok"
    plugin_dir = _volume_plugin(tmp_path, "/data")
    plugin = f"review7d-doc-{name}:latest"
    try:
        direct("plugin", "create", plugin, str(plugin_dir), check=True)
        direct("plugin", "enable", "--timeout", "20", plugin, check=True)
        seen = finding()
        assert seen["status"] == "warn" and plugin in seen["message"], seen
    finally:
        direct("plugin", "rm", "-f", plugin)
