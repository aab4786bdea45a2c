"""Where things live: settings search path, state/runtime dirs, packaged resources."""

from __future__ import annotations

import sys
from pathlib import Path

APP = "eci-agent"

#: Docker Desktop's own admin-settings.json location per OS, so an org's file works unchanged.
DOCKER_DESKTOP_SETTINGS = {
    "linux": Path("/usr/share/docker-desktop/admin-settings.json"),
    "darwin": Path("/Library/Application Support/com.docker.docker/admin-settings.json"),
    "win32": Path("C:/ProgramData/DockerDesktop/admin-settings.json"),
}

OUR_SETTINGS = {
    "linux": Path("/etc/eci-agent/admin-settings.json"),
    "darwin": Path("/Library/Application Support/eci-agent/admin-settings.json"),
    "win32": Path("C:/ProgramData/eci-agent/admin-settings.json"),
}


def _platform() -> str:
    return "linux" if sys.platform.startswith("linux") else sys.platform


def settings_search_path(platform: str | None = None) -> tuple[Path, ...]:
    """Ours first, then Docker Desktop's; the first that exists is used."""
    key = platform or _platform()
    return tuple(p[key] for p in (OUR_SETTINGS, DOCKER_DESKTOP_SETTINGS) if key in p)


def default_settings_path(platform: str | None = None) -> Path:
    """The first existing file of the search path, or ours when none exists yet."""
    candidates = settings_search_path(platform)
    for candidate in candidates:
        if candidate.exists():
            return candidate
    return candidates[0]


def default_state_dir() -> Path:
    # Loaded here, not at import: the service unit names its folders, and platformdirs with
    # what it imports (tempfile, shutil and their compressors) is ~1 MiB of the agent's RSS.
    import platformdirs

    return (
        Path(platformdirs.site_data_dir(APP))
        if _is_root()
        else Path(platformdirs.user_state_dir(APP))
    )


def default_runtime_dir() -> Path:
    if _is_root() and _platform() == "linux":
        return Path("/run") / APP
    import platformdirs

    return Path(platformdirs.user_runtime_dir(APP))


def _is_root() -> bool:
    import os

    return hasattr(os, "geteuid") and os.geteuid() == 0


def resource_path(*parts: str) -> Path:
    """A file under `resources/` (source tree) or the installed share dir."""
    here = Path(__file__).resolve().parent.parent / "resources"
    if here.exists():
        return here.joinpath(*parts)
    return Path(sys.prefix, "share", APP, *parts)
