"""The feature table (resources/features.json) and its evaluation (agent/control/features.py)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from agent.control import features as F
from agent.paths import resource_path
from agent.policy.commands import DOCUMENTED_WILDCARDS, UNSUPPORTED_BY_DOCKER_DESKTOP
from agent.policy.isolation import engine_isolation
from agent.settings.model import AdminSettings
from agent.settings.parse import parse_settings

TABLE = F.load_default_table()
RAW = json.loads(resource_path(F.FEATURES_FILE).read_text())

# What engines really answer to GET /version (Platform.Name shapes as `docker version` prints
# them after "Server:"; Debian's docker.io leaves the name empty).
DESKTOP_436 = {
    "Platform": {"Name": "Docker Desktop 4.36.0 (175267)"},
    "Version": "27.3.1",
    "ApiVersion": "1.47",
    "MinAPIVersion": "1.24",
    "Os": "linux",
    "Arch": "arm64",
    "KernelVersion": "6.10.14-linuxkit",
}
ENGINE_CE = {
    "Platform": {"Name": "Docker Engine - Community"},
    "Version": "27.3.1",
    "ApiVersion": "1.47",
    "Os": "linux",
    "Arch": "amd64",
}
ENGINE_DEBIAN = {"Platform": {"Name": ""}, "Version": "20.10.24+dfsg1", "ApiVersion": "1.41"}


def settings(
    images: list[str] | None = None,
    derived: bool = False,
    commands: list[str] | None = None,
    eci_agent: dict[str, Any] | None = None,
    value: bool = True,
) -> AdminSettings:
    eci: dict[str, Any] = {"value": value, "locked": True}
    socket: dict[str, Any] = {}
    if images is not None:
        socket["imageList"] = {"images": images, "allowDerivedImages": derived}
    if commands is not None:
        socket["commandList"] = {"type": "deny", "commands": commands}
    if socket:
        eci["dockerSocketMount"] = socket
    doc: dict[str, Any] = {"configurationFileVersion": 2, "enhancedContainerIsolation": eci}
    if eci_agent is not None:
        doc["eciAgent"] = eci_agent
    return parse_settings(json.dumps(doc).encode(), "/etc/eci-agent/admin-settings.json")


def desktop(version: str, wsl2: bool = False) -> F.Platform:
    parsed = F.parse_version(version)
    assert parsed is not None
    return F.assumed_desktop(parsed, wsl2=wsl2)


def warned(report: F.FeatureReport, severity: str = "warning") -> set[str]:
    return {w.feature for w in report.warnings if w.severity == severity}


# -- the data ------------------------------------------------------------------------------


def test_every_row_is_well_formed() -> None:
    assert len(TABLE.rows) == len(RAW["features"])
    for row in RAW["features"]:
        assert row["source"].strip(), row["id"]
        assert row["title"].strip(), row["id"]
        assert row["eciAgent"]["state"] in F.AGENT_STATES
        assert row["eciAgent"]["detail"].strip(), row["id"]
        desk = row["dockerDesktop"]
        if desk["support"] == "since":
            assert F.parse_version(desk["version"]) is not None, row["id"]
        assert desk["older"].strip(), row["id"]


def test_every_feature_the_evaluator_names_is_in_the_data() -> None:
    assert F.NAMED_FEATURES <= TABLE.ids, F.NAMED_FEATURES - TABLE.ids
    everything = settings(
        images=["*", "docker:cli", "testcontainers/*:*", "alpine@sha256:" + "a" * 64],
        derived=True,
        commands=["push", "container*", "service*", *UNSUPPORTED_BY_DOCKER_DESKTOP],
        eci_agent={
            "auditMode": True,
            "isolationExceptions": [{"images": ["docker:dind"], "allow": ["--privileged"]}],
            "commandLists": [
                {"images": ["docker:cli"], "commandList": {"type": "allow", "commands": ["ps"]}}
            ],
        },
    )
    used = {u.feature for u in F.features_used(everything, TABLE)}
    assert used <= TABLE.ids
    assert used <= F.NAMED_FEATURES | {r.id for r in TABLE.rows if r.kind == "command"}
    report = F.evaluate(TABLE, everything, platform=desktop("4.13"))
    named = {w.feature for w in report.warnings}
    assert named <= TABLE.ids


def test_the_command_rows_are_exactly_the_commands_docker_desktop_cannot_list() -> None:
    assert set(TABLE.commands()) == set(UNSUPPORTED_BY_DOCKER_DESKTOP)


def test_the_documented_versions() -> None:
    since = {r.id: r.desktop.version for r in TABLE.rows if r.desktop.support == "since"}
    assert since["eci"] == (4, 13, 0)
    assert since["image-list-everything"] == (4, 36, 0)
    assert since["derived-images"] == (4, 34, 0)
    assert since["derived-images-wildcard-tags"] == (4, 36, 0)
    assert since["build-protection"] == (4, 30, 0)
    assert TABLE.get("build-protection").desktop.not_on == ("wsl2",)
    for kind, support in (("container-type", {"not-protected", "not-supported", "since"}),):
        assert {r.desktop.support for r in TABLE.rows if r.kind == kind} <= support
    assert {"docker-extensions", "docker-debug", "kubernetes-pods"} <= TABLE.ids


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda d: d["features"][0].pop("source"), "source"),
        (lambda d: d["features"][0]["dockerDesktop"].update(support="maybe"), "support"),
        (lambda d: d["features"][0]["dockerDesktop"].pop("version"), "version"),
        (lambda d: d["features"][1].update(id=d["features"][0]["id"]), "twice"),
        (lambda d: d["features"][0].update(extra=1), "unknown keys"),
        (lambda d: d["features"][0]["eciAgent"].update(state="maybe"), "state"),
        (lambda d: d["features"][0].update(id="Not An Id"), "id"),
        (lambda d: d["features"][0]["dockerDesktop"].update(notOn=["hyperv"]), "notOn"),
        (lambda d: d.update(schema=2), "schema"),
        (lambda d: d["features"][0].update(kind="service"), "kind"),
    ],
)
def test_a_malformed_table_is_refused(mutate: Any, error: str) -> None:
    doc = copy.deepcopy(RAW)
    mutate(doc)
    with pytest.raises(F.FeatureDataError, match=error):
        F.parse_table(doc)


def test_an_unknown_feature_is_an_error() -> None:
    with pytest.raises(F.FeatureDataError):
        TABLE.get("no-such-feature")


# -- the machine -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "version"),
    [
        ("Docker Desktop 4.36.0 (175267)", (4, 36, 0)),
        ("Docker Desktop 4.35.1 (173168)", (4, 35, 1)),
        ("Docker Desktop 4.33.0 (160616)", (4, 33, 0)),
        ("Docker Engine - Community", None),
        ("", None),
        ("Mirantis Container Runtime", None),
    ],
)
def test_docker_desktop_is_told_by_its_platform_name(name: str, version: Any) -> None:
    assert F.desktop_version(name) == version


def test_platforms() -> None:
    dd = F.platform_from(DESKTOP_436, {"OperatingSystem": "Docker Desktop"})
    assert (dd.kind, dd.desktop_version, dd.engine_version, dd.api_version, dd.wsl2) == (
        F.DOCKER_DESKTOP,
        (4, 36, 0),
        "27.3.1",
        "1.47",
        False,
    )
    wsl = F.platform_from(
        {**DESKTOP_436, "KernelVersion": "5.15.153.1-microsoft-standard-WSL2"}, None
    )
    assert wsl.wsl2
    ce = F.platform_from(ENGINE_CE, None)
    assert (ce.kind, ce.name, ce.desktop_version) == (
        F.DOCKER_ENGINE,
        ENGINE_CE["Platform"]["Name"],
        None,
    )
    debian = F.platform_from(ENGINE_DEBIAN, {"OperatingSystem": "Debian GNU/Linux 12 (bookworm)"})
    assert debian.kind == F.DOCKER_ENGINE and debian.name == ""
    assert F.platform_from(None, None).kind == F.UNKNOWN
    doc = dd.to_dict()
    assert doc["dockerDesktopVersion"] == "4.36" and doc["kind"] == "docker-desktop"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("4.36", (4, 36, 0)), ("4.36.1", (4, 36, 1)), ("v4.35", (4, 35, 0)), ("four", None)],
)
def test_parse_version(text: str, expected: Any) -> None:
    assert F.parse_version(text) == expected


# -- settings x Docker Desktop version -------------------------------------------------------

STAR = settings(images=["*"])
DERIVED_TAG = settings(images=["paketobuildpacks/builder:base"], derived=True)
DERIVED_WILDCARD = settings(images=["paketobuildpacks/builder:*"], derived=True)
COMPOSE = settings(commands=["compose"])
OTHER_WILDCARD = settings(commands=["service*"])
DOCUMENTED_WILDCARD = settings(commands=sorted(DOCUMENTED_WILDCARDS))
EXCEPTIONS = settings(
    eci_agent={"isolationExceptions": [{"images": ["docker:dind"], "allow": ["--privileged"]}]}
)
PLAIN = settings(images=["docker:cli", "testcontainers/ryuk:*"], commands=["push", "build"])


@pytest.mark.parametrize(
    ("policy", "version", "expected"),
    [
        (STAR, "4.33", {"image-list-everything"}),
        (STAR, "4.35", {"image-list-everything"}),
        (STAR, "4.36", set()),
        (DERIVED_TAG, "4.33", {"derived-images"}),
        (DERIVED_TAG, "4.35", set()),
        (DERIVED_TAG, "4.36", set()),
        (DERIVED_WILDCARD, "4.33", {"derived-images-wildcard-tags"}),
        (DERIVED_WILDCARD, "4.35", {"derived-images-wildcard-tags"}),
        (DERIVED_WILDCARD, "4.36", set()),
        (COMPOSE, "4.33", {"command-compose"}),
        (COMPOSE, "4.36", {"command-compose"}),
        (OTHER_WILDCARD, "4.36", {"command-list-other-wildcards"}),
        (DOCUMENTED_WILDCARD, "4.33", set()),
        (EXCEPTIONS, "4.36", {"eciagent-isolation-exceptions"}),
        (PLAIN, "4.33", set()),
        (PLAIN, "4.29", {"build-protection"}),
        (PLAIN, "4.12", {"eci"}),
    ],
)
def test_what_would_not_apply_on_a_docker_desktop(
    policy: AdminSettings, version: str, expected: set[str]
) -> None:
    report = F.evaluate(TABLE, policy, platform=desktop(version))
    assert warned(report) == expected
    assert warned(report, "notice") == set()
    rows = {r["name"]: r for r in report.to_dict()["features"]}
    for feature in expected:
        assert rows[feature]["used"] is True
        assert rows[feature]["dockerDesktop"]["available"] is not True
    assert report.to_dict()["dockerDesktopTarget"] == version


def test_the_star_warning_says_it_allows_nothing_on_4_35() -> None:
    report = F.evaluate(TABLE, STAR, platform=desktop("4.35"))
    (warning,) = report.warnings
    assert "4.36" in warning.message and "4.35" in warning.message
    assert "allows nothing" in warning.message
    assert warning.path == "enhancedContainerIsolation.dockerSocketMount.imageList.images[0]"
    assert report.to_dict()["minimumDockerDesktop"] == "4.36"


def test_wsl2_loses_build_protection_and_vm_protection() -> None:
    report = F.evaluate(TABLE, PLAIN, platform=desktop("4.36", wsl2=True))
    assert warned(report) == {"build-protection", "wsl2-vm-access"}


@pytest.mark.parametrize("version", [ENGINE_CE, ENGINE_DEBIAN])
@pytest.mark.parametrize(
    ("policy", "notices"),
    [
        (STAR, {"image-list-everything", "build-protection"}),
        (DERIVED_WILDCARD, {"derived-images-wildcard-tags", "build-protection"}),
        (COMPOSE, {"command-compose", "build-protection"}),
        (PLAIN, {"build-protection"}),
    ],
)
def test_on_a_plain_engine_only_portability_notices(
    version: dict[str, Any], policy: AdminSettings, notices: set[str]
) -> None:
    report = F.evaluate(TABLE, policy, platform=F.platform_from(version), mode="enforcing")
    assert warned(report) == set()
    assert warned(report, "notice") == notices
    doc = report.to_dict()
    assert doc["dockerDesktopTarget"] is None
    assert doc["platform"]["kind"] == "docker-engine"
    assert all(r["dockerDesktop"]["available"] is None for r in doc["features"])
    json.dumps(doc)


def test_minimum_docker_desktop() -> None:
    assert F.evaluate(TABLE, PLAIN, platform=F.Platform()).minimum_desktop == (4, 30, 0)
    assert F.evaluate(TABLE, DERIVED_TAG, platform=F.Platform()).minimum_desktop == (4, 34, 0)
    assert F.evaluate(TABLE, STAR, platform=F.Platform()).minimum_desktop == (4, 36, 0)
    off = settings(value=False)
    assert F.evaluate(TABLE, off, platform=F.Platform()).minimum_desktop == (4, 13, 0)


def test_what_the_settings_use() -> None:
    used = {
        (u.feature, u.path)
        for u in F.features_used(
            settings(
                images=["docker:cli", "org/*:*"],
                derived=True,
                commands=["image*", "plugin install"],
            ),
            TABLE,
        )
    }
    images = "enhancedContainerIsolation.dockerSocketMount.imageList.images"
    commands = "enhancedContainerIsolation.dockerSocketMount.commandList.commands"
    assert ("derived-images", f"{images}[0]") in used
    assert ("derived-images-wildcard-tags", f"{images}[1]") in used
    assert ("image-list-path-wildcard", f"{images}[1]") in used
    assert ("command-list-wildcards", f"{commands}[0]") in used
    assert ("command-plugin", f"{commands}[1]") in used


# -- this machine's isolation and the agent's mode --------------------------------------------

RUNC = {"Runtimes": {"runc": {}}, "SecurityOptions": ["name=seccomp,profile=default"]}
SYSBOX = {"Runtimes": {"runc": {}, "sysbox-runc": {}}, "SecurityOptions": []}
USERNS = {"Runtimes": {"runc": {}}, "SecurityOptions": ["name=userns"]}


@pytest.mark.parametrize(
    ("info", "level", "state"),
    [
        (RUNC, "none", "partial"),
        (USERNS, "userns-remap", "partial"),
        (SYSBOX, "sysbox", "enforced"),
    ],
)
def test_the_engines_isolation(info: dict[str, Any], level: str, state: str) -> None:
    report = F.evaluate(
        TABLE, PLAIN, platform=F.platform_from(ENGINE_DEBIAN, info), engine=engine_isolation(info)
    )
    doc = report.to_dict()
    assert doc["isolation"]["level"] == level
    rows = {r["name"]: r for r in doc["features"]}
    assert rows["eci"]["state"] == state
    assert rows["docker-in-docker"]["state"] == ("enforced" if level == "sysbox" else "partial")


@pytest.mark.parametrize(
    ("mode", "warning", "active"),
    [("enforcing", None, True), ("audit", "eciagent-audit-mode", False), ("off", "eci", False)],
)
def test_the_agents_mode(mode: str, warning: str | None, active: bool) -> None:
    report = F.evaluate(TABLE, PLAIN, platform=F.platform_from(ENGINE_CE), mode=mode)
    assert warned(report) == ({warning} if warning else set())
    rows = {r["name"]: r for r in report.to_dict()["features"]}
    assert rows["image-list"]["active"] is active
    assert rows["docker-extensions"]["active"] is False


def test_service_rows_come_first() -> None:
    service = {"name": "event-store", "state": "enabled", "kind": "service"}
    doc = F.evaluate(TABLE, PLAIN, platform=F.Platform(), extra_rows=[service]).to_dict()
    assert doc["features"][0] == service
    assert len(doc["features"]) == len(TABLE.rows) + 1
