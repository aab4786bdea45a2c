"""agent.policy.isolation: the host powers a request may not ask for, read as the engine does."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from agent.policy import gojson
from agent.policy.decide import ContainerFact, HostFacts, MissingFact, VolumeFact
from agent.policy.gojson import GoObject
from agent.policy.imageref import parse_image_pattern
from agent.policy.images import ImageVerdict
from agent.policy.isolation import (
    HARMLESS_FILES,
    EngineIsolation,
    IsolationFacts,
    NamespaceFact,
    SensitivePath,
    build_violations,
    create_violations,
    decide_isolation,
    decide_preexisting_start,
    engine_isolation,
    exec_violations,
    inspect_violations,
    isolation_status,
    namespace_targets,
    normalize_allow_token,
    plugin_config_violations,
    plugin_privilege_violations,
    runtime_rewrite,
    sensitive_hit,
    service_network_targets,
    service_violations,
    sets_restart_policy,
    update_violations,
)
from agent.policy.mounts import (
    FromContainer,
    HostPath,
    NamedVolume,
    ResolvedPath,
    clean_host_path,
    create_mounts,
)
from agent.settings.model import AdminSettings, AgentExtensions, IsolationException
from agent.settings.parse import SettingsInvalid, parse_settings

SENSITIVE = (
    SensitivePath("/", "host root folder", "/", (1, 2), inside=False),
    SensitivePath("/etc", "host configuration folder", "/etc", (1, 3)),
    SensitivePath("/proc", "host procfs", "/proc", (5, 1)),
    SensitivePath("/sys", "host sysfs", "/sys", (6, 1)),
    SensitivePath("/dev", "host device folder", "/dev", (7, 1)),
    SensitivePath("/var/lib/docker", "engine's data root", "/var/lib/docker", (1, 9)),
    SensitivePath("/var/run", "engine socket folder", "/run", (8, 1), inside=False),
)


def _resolved(paths: dict[str, str]) -> dict[str, ResolvedPath]:
    out = {}
    for source, target in paths.items():
        out[source] = ResolvedPath(source, target, None, False, True)
    return out


HOST_PATHS = {
    "/srv/data": "/srv/data",
    "/etc": "/etc",
    "/etc/shadow": "/etc/shadow",
    "/etc/localtime": "/usr/share/zoneinfo/UTC",
    "/var": "/var",
    "/var/lib": "/var/lib",
    "/var/lib/docker/volumes/x/_data": "/var/lib/docker/volumes/x/_data",
    "/tmp/link": "/etc",
    "/tmp/ok": "/tmp/ok",
    "/": "/",
    "/dev/fuse": "/dev/fuse",
    "/run/user/1000/ssh": "/run/user/1000/ssh",
    "/var/run": "/run",
    "/home/me/../../etc": "/etc",
}


def facts(**kw: Any) -> IsolationFacts:
    host = HostFacts(
        (),
        _resolved(HOST_PATHS),
        kw.pop("volumes", {}),
        kw.pop("containers_mounts", {}),
    )
    return IsolationFacts(
        engine=kw.pop("engine", EngineIsolation(runtimes=("runc",))),
        sensitive=SENSITIVE,
        host=host,
        containers=kw.pop("containers", {}),
        host_networks=kw.pop("host_networks", (("host", "abcdef0123456789"),)),
    )


def body(text: str) -> GoObject:
    doc = gojson.loads(text)
    assert isinstance(doc, GoObject)
    return doc


def tokens(text: str, f: IsolationFacts | None = None) -> list[str]:
    doc = body(text)
    found = create_violations(doc, create_mounts(doc), f or facts())
    return [v.token for v in found]


def hc(fields: dict[str, Any]) -> str:
    return json.dumps({"Image": "busybox", "HostConfig": fields})


# -- create: every field, as the engine reads it -------------------------------------------------

CREATE_CASES: list[tuple[str, str, list[str]]] = [
    ("plain", hc({"Binds": ["/srv/data:/d"]}), []),
    ("privileged", hc({"Privileged": True}), ["--privileged"]),
    ("privileged-lowercase", '{"hostconfig": {"privileged": true}}', ["--privileged"]),
    ("privileged-kelvin-free", '{"HOSTCONFIG": {"PRIVILEGED": true}}', ["--privileged"]),
    # Go: both keys fill the same field, the last one wins (so this is not privileged)
    (
        "privileged-then-false",
        '{"HostConfig": {"Privileged": true, "privileged": false}}',
        [],
    ),
    (
        "false-then-privileged",
        '{"HostConfig": {"Privileged": false, "privileged": true}}',
        ["--privileged"],
    ),
    # HostConfig given twice: the objects merge
    (
        "hostconfig-twice",
        '{"HostConfig": {"Privileged": true}, "hostConfig": {"Memory": 1}}',
        ["--privileged"],
    ),
    (
        "hostconfig-null-after",
        '{"HostConfig": {"Privileged": true}, "HostConfig": null}',
        ["--privileged"],
    ),
    ("top-level-old-api", '{"Image": "x", "Privileged": true}', ["--privileged"]),
    ("top-level-pid", '{"Image": "x", "PidMode": "host"}', ["--pid=host"]),
    ("pid", hc({"PidMode": "host"}), ["--pid=host"]),
    ("pid-upper", hc({"PidMode": "HOST"}), ["--pid=host"]),
    ("ipc", hc({"IpcMode": "host"}), ["--ipc=host"]),
    ("uts", hc({"UTSMode": "host"}), ["--uts=host"]),
    ("utsmode-case", '{"HostConfig": {"utsmode": "host"}}', ["--uts=host"]),
    ("net", hc({"NetworkMode": "host"}), ["--network=host"]),
    ("net-by-id", hc({"NetworkMode": "abcdef0123456789"}), ["--network=host"]),
    ("net-by-short-id", hc({"NetworkMode": "abcdef01"}), ["--network=host"]),
    ("net-bridge", hc({"NetworkMode": "bridge"}), []),
    ("net-none", hc({"NetworkMode": "none"}), []),
    (
        "endpoints-host",
        '{"NetworkingConfig": {"EndpointsConfig": {"host": {}}}}',
        ["--network=host"],
    ),
    ("userns", hc({"UsernsMode": "host"}), ["--userns=host"]),
    ("cgroupns", hc({"CgroupnsMode": "host"}), ["--cgroupns=host"]),
    ("cgroupns-private", hc({"CgroupnsMode": "private"}), []),
    ("cap-sys-admin", hc({"CapAdd": ["SYS_ADMIN"]}), ["--cap-add=SYS_ADMIN"]),
    ("cap-prefix-lower", hc({"CapAdd": ["cap_sys_ptrace"]}), ["--cap-add=SYS_PTRACE"]),
    ("cap-lone-string", hc({"CapAdd": "sys_module"}), ["--cap-add=SYS_MODULE"]),
    ("cap-all", hc({"CapAdd": ["all"]}), ["--cap-add=ALL"]),
    ("cap-capadd-case", '{"HostConfig": {"capadd": ["CAP_BPF"]}}', ["--cap-add=BPF"]),
    ("cap-capabilities-140", hc({"Capabilities": ["CAP_NET_ADMIN"]}), ["--cap-add=NET_ADMIN"]),
    ("cap-harmless", hc({"CapAdd": ["NET_BIND_SERVICE", "CHOWN"]}), []),
    (
        "cap-several",
        hc({"CapAdd": ["SYS_RAWIO", "SYS_BOOT", "SYS_TIME", "DAC_READ_SEARCH", "PERFMON"]}),
        [
            "--cap-add=SYS_RAWIO",
            "--cap-add=SYS_BOOT",
            "--cap-add=SYS_TIME",
            "--cap-add=DAC_READ_SEARCH",
            "--cap-add=PERFMON",
        ],
    ),
    (
        "device",
        hc({"Devices": [{"PathOnHost": "/dev/sda", "PathInContainer": "/dev/sda"}]}),
        ["--device=/dev/sda"],
    ),
    ("device-cgroup-rule", hc({"DeviceCgroupRules": ["b *:* rwm"]}), ["--device-cgroup-rule"]),
    ("gpus", hc({"DeviceRequests": [{"Count": -1, "Capabilities": [["gpu"]]}]}), ["--gpus"]),
    ("device-requests-empty", hc({"DeviceRequests": []}), []),
    (
        "seccomp-unconfined",
        hc({"SecurityOpt": ["seccomp=unconfined"]}),
        ["--security-opt=seccomp=unconfined"],
    ),
    (
        "seccomp-old-colon",
        hc({"SecurityOpt": ["seccomp:unconfined"]}),
        ["--security-opt=seccomp=unconfined"],
    ),
    (
        "seccomp-profile",
        hc({"SecurityOpt": ['seccomp={"defaultAction":"SCMP_ACT_ALLOW"}']}),
        ["--security-opt=seccomp"],
    ),
    (
        "apparmor-unconfined",
        hc({"SecurityOpt": ["apparmor=unconfined"]}),
        ["--security-opt=apparmor=unconfined"],
    ),
    ("apparmor-default", hc({"SecurityOpt": ["apparmor=docker-default"]}), []),
    ("label-disable", hc({"SecurityOpt": ["label=disable"]}), ["--security-opt=label=disable"]),
    ("label-old-disable", hc({"SecurityOpt": ["label:disable"]}), ["--security-opt=label=disable"]),
    ("label-bare-disable", hc({"SecurityOpt": ["disable"]}), ["--security-opt=label=disable"]),
    ("label-type", hc({"SecurityOpt": ["label=type:spc_t"]}), ["--security-opt=label=type:spc_t"]),
    ("label-level", hc({"SecurityOpt": ["label=level:s0:c100,c200"]}), []),
    ("no-new-privileges", hc({"SecurityOpt": ["no-new-privileges"]}), []),
    (
        "systempaths",
        hc({"MaskedPaths": [], "ReadonlyPaths": []}),
        ["--security-opt=systempaths=unconfined"],
    ),
    (
        "sysctl-namespaced",
        hc(
            {
                "Sysctls": {
                    "net.ipv4.ip_forward": "1",
                    "kernel.shmmax": "1",
                    "fs.mqueue.msg_max": "9",
                }
            }
        ),
        [],
    ),
    (
        "sysctl-host",
        hc({"Sysctls": {"kernel.core_pattern": "|/x"}}),
        ["--sysctl=kernel.core_pattern"],
    ),
    ("sysctl-slash", hc({"Sysctls": {"kernel/panic": "1"}}), ["--sysctl=kernel.panic"]),
    (
        "sysctl-net-on-host",
        hc({"NetworkMode": "host", "Sysctls": {"net.ipv4.ip_forward": "1"}}),
        ["--network=host", "--sysctl=net.ipv4.ip_forward"],
    ),
    ("bind-etc", hc({"Binds": ["/etc:/x"]}), ["--volume=/etc"]),
    ("bind-etc-file", hc({"Binds": ["/etc/shadow:/x:ro"]}), ["--volume=/etc/shadow"]),
    ("bind-localtime", hc({"Binds": ["/etc/localtime:/etc/localtime:ro"]}), []),
    ("bind-root", hc({"Binds": ["/:/host"]}), ["--volume=/"]),
    ("bind-parent-of-data-root", hc({"Binds": ["/var/lib:/x"]}), ["--volume=/var/lib"]),
    (
        "bind-inside-data-root",
        hc({"Binds": ["/var/lib/docker/volumes/x/_data:/x"]}),
        ["--volume=/var/lib/docker/volumes/x/_data"],
    ),
    ("bind-symlink-to-etc", hc({"Binds": ["/tmp/link:/x"]}), ["--volume=/tmp/link"]),
    ("bind-dotdot", hc({"Binds": ["/home/me/../../etc:/x"]}), ["--volume=/etc"]),
    ("bind-socket-folder", hc({"Binds": ["/var/run:/x"]}), ["--volume=/var/run"]),
    ("bind-in-run-ok", hc({"Binds": ["/run/user/1000/ssh:/ssh"]}), []),
    ("bind-dev-file", hc({"Binds": ["/dev/fuse:/dev/fuse"]}), ["--volume=/dev/fuse"]),
    (
        "mount-bind",
        hc({"Mounts": [{"Type": "bind", "Source": "/etc", "Target": "/x"}]}),
        ["--volume=/etc"],
    ),
    (
        "mount-bind-case",
        '{"HostConfig": {"mounts": [{"type": "bind", "source": "/", "target": "/h"}]}}',
        ["--volume=/"],
    ),
    ("legacy-volumes-key", '{"Image": "x", "Volumes": {"/etc:/x": {}}}', ["--volume=/etc"]),
    ("top-level-binds", '{"Image": "x", "Binds": ["/:/h"]}', ["--volume=/"]),
]


@pytest.mark.parametrize(
    ("case", "text", "expected"), CREATE_CASES, ids=[c[0] for c in CREATE_CASES]
)
def test_create_violations(case: str, text: str, expected: list[str]) -> None:
    assert tokens(text) == expected


def test_named_volume_bound_to_etc_and_volumes_from() -> None:
    f = facts(
        volumes={"v": VolumeFact("v", True, device="/etc"), "plain": VolumeFact("plain", True)},
        containers_mounts={"old": ContainerFact("old", (HostPath("/", "old.Mounts[0]", False),))},
    )
    assert tokens(hc({"Binds": ["v:/x", "plain:/y"]}), f) == ["--volume=/etc"]
    assert tokens(hc({"VolumesFrom": ["old:ro"]}), f) == ["--volume=/"]


def test_unresolved_paths_and_unlooked_up_objects_fail_closed() -> None:
    f = facts()
    doc = body(hc({"Binds": ["/not/resolved:/x"]}))
    with pytest.raises(MissingFact):
        create_violations(doc, create_mounts(doc), f)
    doc = body(hc({"PidMode": "container:unknown"}))
    with pytest.raises(MissingFact):
        create_violations(doc, (), f)


NS_CONTAINERS = {
    "hostpid": NamespaceFact("hostpid", "1", {"PidMode": "host", "IpcMode": "", "NetworkMode": ""}),
    "plain": NamespaceFact(
        "plain", "2", {"PidMode": "", "IpcMode": "private", "NetworkMode": "none"}
    ),
    "chained": NamespaceFact("chained", "3", {"PidMode": "container:hostpid"}),
    "hostnet": NamespaceFact("hostnet", "4", {"NetworkMode": "abcdef0123456789"}),
    "gone": NamespaceFact("gone", modes=None),
}


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ({"PidMode": "container:hostpid"}, ["--pid=host"]),
        ({"PidMode": "container:plain"}, []),
        ({"PidMode": "container:chained"}, ["--pid=host"]),
        ({"NetworkMode": "container:hostnet"}, ["--network=host"]),
        ({"IpcMode": "container:plain"}, []),
        ({"PidMode": "container:gone"}, []),
    ],
)
def test_container_modes_follow_the_target(mode: dict[str, str], expected: list[str]) -> None:
    assert tokens(hc(mode), facts(containers=NS_CONTAINERS)) == expected


def test_namespace_targets_are_listed_for_the_shell() -> None:
    doc = body('{"HostConfig": {"PidMode": "container:a", "networkmode": "container:b"}}')
    hc_obj = doc.field("HostConfig")
    assert namespace_targets(hc_obj, doc) == {"a", "b"}


# -- sensitive paths -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "resolved", "inode", "hit"),
    [
        ("/etc", "/etc", None, "is"),
        ("/x", "/x", (1, 3), "is"),  # a bind mount of /etc elsewhere (same inode)
        ("/var", "/var", None, "holds"),
        ("/etc/ssh", "/etc/ssh", None, "inside"),
        ("/srv", "/srv", None, None),
        ("/run/user/1", "/run/user/1", None, None),
        ("/etc/localtime", "/usr/share/zoneinfo/UTC", None, None),
        ("/tmp/tz", "/etc/localtime", None, "inside"),
    ],
)
def test_sensitive_hit(
    source: str, resolved: str, inode: tuple[int, int] | None, hit: str | None
) -> None:
    found = sensitive_hit(source, resolved, inode, SENSITIVE)
    assert (found[1] if found else None) == hit


# -- other routes ----------------------------------------------------------------------------------


def test_exec_privileged_with_case_and_duplicates() -> None:
    assert [v.token for v in exec_violations(body('{"Privileged": true}'))] == ["--privileged"]
    assert [v.token for v in exec_violations(body('{"privileged": true}'))] == ["--privileged"]
    assert exec_violations(body('{"Privileged": true, "PRIVILEGED": false}')) == []
    assert exec_violations(body('{"Cmd": ["sh"], "User": "root"}')) == []


def test_update_devices() -> None:
    assert [
        v.token for v in update_violations(body('{"Devices": [{"PathOnHost": "/dev/sda"}]}'))
    ] == ["--device"]
    assert update_violations(body('{"Memory": 1000000, "RestartPolicy": {"Name": "always"}}')) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"RestartPolicy": {"Name": "always"}}', True),
        ('{"restartpolicy": {"name": "on-failure", "MaximumRetryCount": 3}}', True),
        ('{"RestartPolicy": {"Name": "unless-stopped"}}', True),
        ('{"RestartPolicy": {"Name": "sometimes"}}', True),  # unknown: judged, to be safe
        ('{"RestartPolicy": {"Name": 1}}', True),
        ('{"RestartPolicy": {"Name": "no"}}', False),
        ('{"RestartPolicy": {"Name": ""}}', False),
        ('{"RestartPolicy": {}}', False),
        ('{"RestartPolicy": null}', False),
        ('{"Memory": 1000000}', False),
    ],
)
def test_sets_restart_policy(text: str, expected: bool) -> None:
    assert sets_restart_policy(body(text)) is expected


def test_service_violations() -> None:
    doc = body(
        json.dumps(
            {
                "TaskTemplate": {
                    "ContainerSpec": {
                        "Image": "x",
                        "CapabilityAdd": ["CAP_SYS_ADMIN"],
                        "Privileges": {
                            "SELinuxContext": {"Disable": True},
                            "Seccomp": {"Mode": "unconfined"},
                            "AppArmor": {"Mode": "disabled"},
                        },
                        "Sysctls": {"kernel.panic": "1"},
                    },
                    "Networks": [{"Target": "host"}],
                }
            }
        )
    )
    assert [v.token for v in service_violations(doc, facts())] == [
        "--cap-add=SYS_ADMIN",
        "--security-opt=label=disable",
        "--security-opt=seccomp=unconfined",
        "--security-opt=apparmor=unconfined",
        "--sysctl=kernel.panic",
        "--network=host",
    ]
    assert (
        service_violations(body('{"TaskTemplate": {"ContainerSpec": {"Image": "x"}}}'), facts())
        == []
    )


SWARM_HOST = (("host", "abcdef0123456789"), ("9f8e", "9f8e7d6c5b4a"))


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        # the deprecated top-level Networks: the engine takes it when the task names none
        ({"Networks": [{"Target": "host"}]}, ["Networks[0].Target"]),
        ({"networks": [{"target": "HOST"}]}, ["Networks[0].Target"]),  # any case, to be safe
        ({"networks": [{"target": "host"}]}, ["Networks[0].Target"]),
        ({"Networks": [{"Target": "bridge"}, {"Target": "9f8e7d"}]}, ["Networks[1].Target"]),
        ({"TaskTemplate": {"Networks": [{"Target": "9f8e"}]}}, ["TaskTemplate.Networks[0].Target"]),
        ({"TaskTemplate": {"Networks": [{"Target": "9f8e7d6c5b4a"}]}},
         ["TaskTemplate.Networks[0].Target"]),
        ({"TaskTemplate": {"Networks": [{"Target": "9f8f"}]}}, []),
        ({"TaskTemplate": {"Networks": [{"Target": "mynet"}]}, "Networks": [{"Target": "host"}]},
         ["Networks[0].Target"]),
        ({"TaskTemplate": "x", "Networks": [{"Target": "host"}]}, ["Networks[0].Target"]),
        ({"Networks": "host"}, []),  # not a list: the engine refuses the body
    ],
)  # fmt: skip
def test_service_networks_top_level_and_by_id(spec: dict[str, Any], expected: list[str]) -> None:
    found = service_violations(body(json.dumps(spec)), facts(host_networks=SWARM_HOST))
    assert [v.via for v in found] == expected


def test_service_network_targets() -> None:
    doc = body(
        json.dumps(
            {
                "Networks": [{"Target": "a"}, {"Target": ""}, {"Aliases": ["x"]}],
                "TaskTemplate": {"Networks": [{"Target": "b"}, {"Target": 3}]},
            }
        )
    )
    assert service_network_targets(doc) == {"a", "b"}
    assert service_network_targets(body('{"TaskTemplate": []}')) == set()


@pytest.mark.parametrize(
    ("mounts", "expected"),
    [
        ([{"Type": "proc", "Source": "proc", "Destination": "/hp"}], ["Config.Mounts[0].Type"]),
        ([{"Type": "sysfs", "Source": "sysfs", "Destination": "/s"}], ["Config.Mounts[0].Type"]),
        ([{"Type": "cgroup2", "Source": "x", "Destination": "/c"}], ["Config.Mounts[0].Type"]),
        ([{"Type": ["proc"], "Destination": "/c"}], ["Config.Mounts[0].Type"]),
        ([{"Type": "bind", "Source": "/srv/x", "Destination": "/x"}], []),
        ([{"Type": "tmpfs", "Destination": "/t"}], []),
        ([{"Source": "/srv/x", "Destination": "/x", "Options": ["rbind"]}], []),
    ],
)
def test_plugin_mount_types(mounts: list[dict[str, Any]], expected: list[str]) -> None:
    """A plugin's own procfs, sysfs or cgroup mount reaches host-wide kernel state (session
    7's third review wrote kernel.core_uses_pid from a plugin); the binds are judged as host
    paths elsewhere. `Settings.Mounts` is read too."""
    found = plugin_config_violations({"Config": {"Mounts": mounts}}, facts())
    assert [v.via for v in found] == expected
    found = plugin_config_violations({"Settings": {"Mounts": mounts}}, facts())
    assert [v.via for v in found] == [e.replace("Config", "Settings") for e in expected]


@pytest.mark.parametrize(
    ("interface", "refused"),
    [
        ({"Types": ["docker.volumedriver/1.0"], "Socket": "v.sock"}, True),
        ({"Types": [{"Capability": "volumedriver", "Prefix": "docker", "Version": "1.0"}]}, True),
        ({"Types": ["docker.logdriver/1.0", "docker.VolumeDriver/2.0"]}, True),
        ({"Types": ["docker.logdriver/1.0"]}, False),
        ({"Types": None}, False),
        (None, False),
    ],
)
def test_volume_driver_plugins_are_refused(interface: Any, refused: bool) -> None:
    """The engine mounts whatever path a volume plugin answers (session 7: a plugin made with
    `docker plugin create` handed a container the engine socket's folder)."""
    found = plugin_config_violations({"Config": {"Interface": interface}}, facts())
    assert [v.token for v in found] == (["--volume-driver"] if refused else [])


def test_plugin_privileges_and_config() -> None:
    privs = gojson.loads(
        json.dumps(
            [
                {"Name": "network", "Value": ["host"]},
                {"Name": "capabilities", "Value": ["CAP_SYS_ADMIN"]},
                {"Name": "mount", "Value": ["/var/lib/docker/plugins"]},
                {"Name": "device", "Value": ["/dev/fuse"]},
                {"Name": "allow-all-devices", "Value": ["true"]},
                {"Name": "host pid namespace", "Value": ["true"]},
            ]
        )
    )
    assert [v.token for v in plugin_privilege_violations(privs, "p")] == [
        "--network=host",
        "--cap-add=SYS_ADMIN",
        "--volume=/var/lib/docker/plugins",
        "--device",
        "--device",
        "--pid=host",
    ]
    assert (
        plugin_privilege_violations(gojson.loads('[{"Name": "network", "Value": ["none"]}]'), "p")
        == []
    )
    info = {"Config": {"Linux": {"Capabilities": ["CAP_SYS_ADMIN"]}, "Network": {"Type": "host"}}}
    assert [v.token for v in plugin_config_violations(info, facts())] == [
        "--network=host",
        "--cap-add=SYS_ADMIN",
    ]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"networkmode": "host"}, ["--network=host"]),
        ({"networkmode": "container:abc"}, ["--network=host"]),
        ({"networkmode": "default"}, []),
        ({"securityopt": '["seccomp=unconfined"]'}, ["--security-opt=seccomp=unconfined"]),
        ({"cgroupparent": "/" + "a" * 64}, ["--cgroup-parent"]),  # named like a container
        ({"cgroupparent": "/docker/" + "b" * 64}, ["--cgroup-parent"]),
        ({"cgroupparent": "/ci-builds"}, []),
        ({}, []),
    ],
)
def test_build_query(query: dict[str, str], expected: list[str]) -> None:
    assert [v.token for v in build_violations(query)] == expected


# -- engine isolation, runtime ----------------------------------------------------------------------


def test_engine_isolation_from_info() -> None:
    info = {
        "Runtimes": {"runc": {}, "sysbox-runc": {}},
        "SecurityOptions": ["name=seccomp,profile=default", "name=userns"],
        "DockerRootDir": "/var/lib/docker/100000.100000",
        "CgroupVersion": "2",
    }
    eng = engine_isolation(info)
    assert eng.has_sysbox and eng.userns_remap and not eng.rootless and not eng.cgroup_v1
    assert eng.docker_root_dir == "/var/lib/docker/100000.100000"
    plain = engine_isolation({"Runtimes": {"runc": {}}, "SecurityOptions": ["name=seccomp"]})
    assert not plain.has_sysbox and not plain.userns_remap
    assert "API checks only" in isolation_status(plain)
    assert "userns-remap" in isolation_status(plain)
    assert "user namespaces" in isolation_status(
        engine_isolation({"SecurityOptions": ["name=userns"]})
    )
    assert "strong" in isolation_status(eng)


def test_sysbox_runtime_is_forced_and_others_refused() -> None:
    sysbox = EngineIsolation(runtimes=("runc", "sysbox-runc"))
    f = facts(engine=sysbox)
    assert runtime_rewrite(body('{"Image": "x"}'), sysbox) == "sysbox-runc"
    assert runtime_rewrite(body(hc({"Runtime": "sysbox-runc"})), sysbox) is None
    assert runtime_rewrite(body('{"Image": "x"}'), EngineIsolation(runtimes=("runc",))) is None
    assert tokens(hc({"Runtime": "runc"}), f) == ["--runtime=runc"]
    assert tokens('{"hostconfig": {"runtime": "io.containerd.runc.v2"}}', f) == [
        "--runtime=io.containerd.runc.v2"
    ]
    assert tokens(hc({"Runtime": "runc"})) == []  # no sysbox: the engine's runtimes are its own


# -- decisions, exceptions, pre-existing containers --------------------------------------------------


def _settings(*entries: tuple[list[str], list[str]]) -> AdminSettings:
    exceptions = tuple(
        IsolationException(
            tuple(parse_image_pattern(i) for i in images),
            frozenset(normalize_allow_token(a) for a in allow),
        )
        for images, allow in entries
    )
    return AdminSettings(extensions=AgentExtensions(isolation_exceptions=exceptions))


ALLOWED = ImageVerdict(True, "digest matches", "x")
NOT_ALLOWED = ImageVerdict(False, "not in the registry")


def test_denial_names_the_options_and_the_way_out() -> None:
    doc = body('{"Image": "busybox", "HostConfig": {"PidMode": "host", "Privileged": true}}')
    d = decide_isolation(AdminSettings(), doc, (), facts(), settings_where="/etc/x.json")
    assert not d.allowed and d.status == 403 and d.rule == "isolation"
    assert d.message.startswith("enhanced container isolation: container with image ")
    assert "`--privileged`, `--pid=host` are not allowed" in d.message
    assert "eciAgent.isolationExceptions in /etc/x.json" in d.message


@pytest.mark.parametrize(
    ("allow", "image", "verdict", "allowed"),
    [
        (["SYS_PTRACE", "--pid=host"], "docker.io/library/some:1", ALLOWED, True),
        (["--cap-add=sys_ptrace", "--pid host"], "some:2", ALLOWED, True),
        (["SYS_PTRACE"], "some:1", ALLOWED, False),  # --pid=host not named
        (["SYS_PTRACE", "--pid=host"], "other:1", ALLOWED, False),  # another image
        (["SYS_PTRACE", "--pid=host"], "some:1", NOT_ALLOWED, False),  # digest not the registry's
        (["SYS_PTRACE", "--pid=host"], "some:1", None, False),  # not checked
    ],
)
def test_exceptions_by_name_and_digest(
    allow: list[str], image: str, verdict: ImageVerdict | None, allowed: bool
) -> None:
    settings = _settings((["docker.io/library/some:*"], allow))
    doc = body(
        json.dumps({"Image": image, "HostConfig": {"PidMode": "host", "CapAdd": ["SYS_PTRACE"]}})
    )
    d = decide_isolation(
        settings,
        doc,
        (),
        facts(),
        settings_where="s",
        verdicts={0: verdict} if verdict is not None else None,
    )
    assert d.allowed is allowed, d.message


@pytest.mark.parametrize(
    ("text", "token"),
    [
        ("SYS_PTRACE", "--cap-add=SYS_PTRACE"),
        ("cap_sys_admin", "--cap-add=SYS_ADMIN"),
        ("--cap-add SYS_ADMIN", "--cap-add=SYS_ADMIN"),
        ("--pid=host", "--pid=host"),
        ("--net=host", "--network=host"),
        ("--device", "--device"),
        ("--device=/dev/fuse", "--device=/dev/fuse"),
        ("--security-opt seccomp=unconfined", "--security-opt=seccomp=unconfined"),
        ("--security-opt=label:disable", "--security-opt=label=disable"),
        ("-v /sys:/sys:ro", "--volume=/sys"),
        ("--sysctl kernel/panic", "--sysctl=kernel.panic"),
        ("--privileged", "--privileged"),
    ],
)
def test_allow_tokens(text: str, token: str) -> None:
    assert normalize_allow_token(text) == token


@pytest.mark.parametrize(
    "text",
    [
        "",
        "--pid=private",
        "NET_BIND_SERVICE",
        "--bogus",
        "--privileged=1",
        "hello world",
        "-v rel:/x",
    ],
)
def test_bad_allow_tokens(text: str) -> None:
    with pytest.raises(ValueError):
        normalize_allow_token(text)


def test_preexisting_container_from_inspect() -> None:
    info = body(
        json.dumps(
            {
                "Name": "/old",
                "Config": {"Image": "busybox"},
                "HostConfig": {
                    "Privileged": True,
                    "NetworkMode": "default",
                    "IpcMode": "private",
                    "CgroupnsMode": "private",
                    "MaskedPaths": sorted(
                        [
                            "/proc/asound",
                            "/proc/acpi",
                            "/proc/kcore",
                            "/proc/keys",
                            "/proc/latency_stats",
                            "/proc/timer_list",
                            "/proc/timer_stats",
                            "/proc/sched_debug",
                            "/proc/scsi",
                            "/sys/firmware",
                        ]
                    ),  # fmt: skip
                    "Runtime": "runc",
                },
            }
        )
    )
    found = inspect_violations(info, (HostPath("/etc", "old.Mounts[0]", False),), facts())
    assert [v.token for v in found] == ["--privileged", "--volume=/etc"]
    d = decide_preexisting_start(AdminSettings(), "old", "busybox", found, settings_where="s")
    assert not d.allowed and d.rule == "isolation-start"
    assert "container old was created with `--privileged`" in d.message
    assert "docker rm old" in d.message
    sysbox = facts(engine=EngineIsolation(runtimes=("sysbox-runc",)))
    assert "--runtime=runc" in [v.token for v in inspect_violations(info, (), sysbox)]
    clean = body('{"HostConfig": {"NetworkMode": "default", "Runtime": "runc"}}')
    assert inspect_violations(clean, (), facts()) == []


def test_mount_intent_kinds_are_all_judged() -> None:
    f = facts(volumes={"v": VolumeFact("v", True, device="/")})
    found = create_violations(
        body('{"Image": "x"}'),
        (NamedVolume("v", "HostConfig.Binds[0]"), FromContainer("c", "HostConfig.VolumesFrom[0]")),
        IsolationFacts(
            engine=f.engine,
            sensitive=f.sensitive,
            host=HostFacts(
                (),
                f.host.paths if f.host else {},
                {"v": VolumeFact("v", True, device="/")},
                {"c": ContainerFact("c", ())},
            ),
        ),
    )
    assert [v.token for v in found] == ["--volume=/"]


# -- settings ----------------------------------------------------------------------------------------


def _settings_doc(ext: Any) -> bytes:
    return json.dumps(
        {
            "configurationFileVersion": 2,
            "enhancedContainerIsolation": {"value": True, "locked": True},
            "eciAgent": ext,
        }
    ).encode()


def test_settings_parse_isolation_exceptions() -> None:
    s = parse_settings(
        _settings_doc(
            {
                "isolationExceptions": [
                    {"images": ["docker.io/library/some:*"], "allow": ["SYS_PTRACE", "--pid=host"]}
                ]
            }
        )
    )
    (entry,) = s.extensions.isolation_exceptions
    assert entry.allow == frozenset({"--cap-add=SYS_PTRACE", "--pid=host"})
    assert entry.images[0].normalized() == "docker.io/library/some:*"


@pytest.mark.parametrize(
    ("ext", "problem"),
    [
        ({"isolationExceptions": [{"images": ["*"], "allow": ["--privileged"]}]}, "every image"),
        (
            {"isolationExceptions": [{"images": ["x:1"], "allow": ["--pid=private"]}]},
            "only --pid=host",
        ),
        ({"isolationExceptions": [{"images": ["x:1"]}]}, "at least one option"),
        ({"isolationExceptions": [{"allow": ["--privileged"]}]}, "at least one image"),
        ({"isolationExceptions": {"images": []}}, "expected an array"),
    ],
)
def test_settings_refuse_bad_exceptions(ext: Any, problem: str) -> None:
    with pytest.raises(SettingsInvalid) as err:
        parse_settings(_settings_doc(ext))
    assert problem in str(err.value)


def test_check_summary_lists_isolation_exceptions() -> None:
    from agent.cli.main import settings_summary

    s = parse_settings(
        _settings_doc({"isolationExceptions": [{"images": ["some:1"], "allow": ["--pid host"]}]})
    )
    assert settings_summary(s)["eciAgent"]["isolationExceptions"] == [
        {"images": ["docker.io/library/some:1"], "allow": ["--pid=host"]}
    ]


# -- sensitive_hit against its plain definition ---------------------------------------------------
# SensitivePath carries its cleaned forms (computed once, not per bind); the answer must be the
# one the plain definition gives, for every shape of path.


def reference_sensitive_hit(
    source: str, resolved: str, inode: tuple[int, int] | None, sensitive: list[SensitivePath]
) -> tuple[SensitivePath, str] | None:
    def under(path: str, folder: str) -> bool:
        return path != folder and path.startswith(folder.rstrip("/") + "/")

    candidates = {clean_host_path(source), clean_host_path(resolved)} - {""}
    if candidates & HARMLESS_FILES and not any(c.startswith("/proc/") for c in candidates):
        if clean_host_path(source) in HARMLESS_FILES:
            return None
    for sens in sensitive:
        targets = {clean_host_path(sens.path)}
        if sens.resolved:
            targets.add(clean_host_path(sens.resolved))
        if candidates & targets or (inode is not None and inode == sens.inode):
            return sens, "is"
        for cand in candidates:
            if any(under(t, cand) for t in targets):
                return sens, "holds"
            if sens.inside and any(under(cand, t) for t in targets):
                return sens, "inside"
    return None


PATH_PARTS = [
    "",
    "/",
    "//",
    "/etc",
    "/etc/",
    "/etc/localtime",
    "/var",
    "/var/lib/docker",
    "/var/lib/docker/",
    "/var/lib/dockerx",
    "/run",
    "/run/docker.sock",
    "/proc/1",
    "/a/../etc",
    "/./var/lib",
    "/home/u/src",
    "/etc/timezone",
    "/var/lib/docker/../..",
]


def test_sensitive_hit_equals_the_plain_definition() -> None:
    rng = random.Random(0x5E45)
    for _ in range(4000):
        sensitive = [
            SensitivePath(
                rng.choice(PATH_PARTS[1:]),
                "label",
                rng.choice(PATH_PARTS),
                rng.choice([None, (1, 2), (1, 3)]),
                rng.random() < 0.5,
            )
            for _ in range(rng.randrange(1, 5))
        ]
        source, resolved = rng.choice(PATH_PARTS[1:]), rng.choice(PATH_PARTS)
        inode = rng.choice([None, (1, 2), (9, 9)])
        assert sensitive_hit(source, resolved, inode, sensitive) == reference_sensitive_hit(
            source, resolved, inode, sensitive
        ), (source, resolved, inode, sensitive)


# -- bind propagation back to the host (review 8c) --------------------------------------------


@pytest.mark.parametrize(
    ("host_config", "refused"),
    [
        ({"Binds": ["/h/p:/x:rshared"]}, True),
        ({"Binds": ["/h/p:/x:ro,shared"]}, True),
        ({"Binds": ["/h/p:/x:rslave"]}, False),
        ({"Binds": ["/h/p:/x"]}, False),
        ({"Mounts": [{"Type": "bind", "Source": "/h/p", "Target": "/x",
                      "BindOptions": {"Propagation": "rshared"}}]}, True),
        ({"Mounts": [{"Type": "bind", "Source": "/h/p", "Target": "/x",
                      "BindOptions": {"Propagation": "private"}}]}, False),
    ],
    ids=["binds-rshared", "binds-shared", "binds-rslave", "binds-plain", "mounts-rshared",
         "mounts-private"],
)  # fmt: skip
def test_shared_bind_propagation_is_refused(host_config, refused):
    body = gojson.loads(json.dumps({"Image": "x", "HostConfig": host_config}))
    found = create_violations(body, (), IsolationFacts(host=HostFacts((), {})))
    tokens = [v.token for v in found]
    assert ("--mount-propagation=shared" in tokens) is refused, found


def test_shared_propagation_can_be_allowed_only_as_itself():
    assert normalize_allow_token("--mount-propagation=rshared") == "--mount-propagation=shared"
    with pytest.raises(ValueError):
        normalize_allow_token("--mount-propagation=slave")


def test_a_service_with_shared_propagation_is_refused():
    mount = {"Type": "bind", "Source": "/h/p", "Target": "/x",
             "BindOptions": {"Propagation": "rshared"}}  # fmt: skip
    body = gojson.loads(json.dumps({"TaskTemplate": {"ContainerSpec": {"Mounts": [mount]}}}))
    found = service_violations(body, IsolationFacts())
    assert [v.via for v in found] == [
        "TaskTemplate.ContainerSpec.Mounts[0].BindOptions.Propagation"
    ]
