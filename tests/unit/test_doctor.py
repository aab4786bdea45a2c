"""`eci-agent doctor`'s judgement: each finding from facts (agent/doctor/checks.py)."""

from __future__ import annotations

import dataclasses
import stat
from typing import Any

import pytest

from agent.doctor import checks as C

ENGINE = "/run/eci/engine/docker.sock"
OPEN = (C.Folder("/run/eci/engine", 0, 0, 0o40755), C.Folder("/run/eci", 0, 0, 0o40755))
CLOSED = (C.Folder("/run/eci/engine", 0, 0, 0o40700), C.Folder("/run/eci", 0, 0, 0o40755))
VERSION = {"Platform": {"Name": ""}, "Version": "20.10.24", "ApiVersion": "1.41"}
INFO_RUNC = {"ID": "X", "Runtimes": {"runc": {}}, "SecurityOptions": ["name=seccomp"]}
STATUS = {
    "agent": {"version": "0.1.0", "pid": 42},
    "mode": "enforcing",
    "enforcing": True,
    "locked": True,
    "settings": {"source": "/etc/eci-agent/admin-settings.json"},
    "engine": {"socket": ENGINE, "reachable": True},
}


def sock(mode: int, uid: int = 0, gid: int = 0, **kw: Any) -> C.PathFacts:
    kw.setdefault("folders", OPEN)
    kw.setdefault("group_name", {0: "root", 106: "docker"}.get(gid, str(gid)))
    return C.PathFacts(ENGINE, uid=uid, gid=gid, mode=stat.S_IFSOCK | mode, **kw)


def facts(**kw: Any) -> C.DoctorFacts:
    base = C.DoctorFacts(
        engine=C.EngineFacts(ENGINE, VERSION, INFO_RUNC),
        engine_socket=sock(0o660),
        agent=C.AgentFacts("/run/eci-agent/control.sock", STATUS),
        settings=C.SettingsFacts("/etc/eci-agent/admin-settings.json", sha256="ab" * 32),
        daemons=(C.DaemonFacts(1, ("unix://" + ENGINE,)),),
    )
    return dataclasses.replace(base, **kw)


def found(f: C.DoctorFacts, check: str) -> list[C.Finding]:
    return [x for x in C.diagnose(f) if x.check == check]


def statuses(f: C.DoctorFacts, check: str) -> list[str]:
    return [x.status for x in found(f, check)]


def test_a_healthy_machine_has_no_failures() -> None:
    findings = C.diagnose(facts())
    assert C.exit_status(findings) == 0
    assert {f.check for f in findings if f.status == C.WARN} == {"sysbox", "userns-remap"}
    for f in findings:
        if f.status != C.OK:
            assert f.fix, f


def test_the_engine_does_not_answer() -> None:
    f = facts(engine=C.EngineFacts(ENGINE, error="connection refused"))
    (finding,) = found(f, "engine-reachable")
    assert finding.status == C.FAIL and "connection refused" in finding.message
    assert C.exit_status(C.diagnose(f)) == 1
    assert found(f, "sysbox") == []  # no /info, no isolation facts


def test_the_engine_answers() -> None:
    (finding,) = found(facts(), "engine-reachable")
    assert finding.status == C.OK and "20.10.24" in finding.message and "1.41" in finding.message


@pytest.mark.parametrize(
    ("socket", "status", "words"),
    [
        (sock(0o660), C.OK, "only root"),
        (sock(0o600), C.OK, "only root"),
        (sock(0o666), C.FAIL, "every user"),
        (sock(0o666, folders=CLOSED), C.WARN, "/run/eci/engine keeps others out"),
        (sock(0o660, gid=106, group_members=("alice", "bob")), C.FAIL, "(alice, bob)"),
        (sock(0o660, gid=106, group_members=("alice",), folders=CLOSED), C.WARN, "keeps them out"),
        (sock(0o660, gid=106), C.WARN, "no members today"),
        (sock(0o660, gid=0, group_members=("carol",)), C.WARN, "group root"),
        (sock(0o600, uid=1000), C.FAIL, "owned by uid 1000"),
        (C.PathFacts(ENGINE, exists=False, is_socket=False), C.FAIL, "does not exist"),
        (C.PathFacts(ENGINE, is_socket=False, mode=stat.S_IFREG | 0o644), C.FAIL, "not a socket"),
    ],
)
def test_the_engine_socket(socket: C.PathFacts, status: str, words: str) -> None:
    findings = found(facts(engine_socket=socket), "engine-socket")
    assert [x.status for x in findings] == [status], findings
    assert words in findings[0].message
    if status != C.OK:
        assert findings[0].fix


def test_group_members_on_a_shared_folder_reach_the_socket() -> None:
    folders = (C.Folder("/run/eci/engine", 0, 106, 0o40750), C.Folder("/run/eci", 0, 0, 0o40755))
    socket = sock(0o660, gid=106, group_members=("alice",), folders=folders)
    assert statuses(facts(engine_socket=socket), "engine-socket") == [C.FAIL]


def test_a_rootless_engines_socket_is_owned_by_its_user() -> None:
    info = {**INFO_RUNC, "SecurityOptions": ["name=seccomp", "name=rootless"]}
    f = facts(engine=C.EngineFacts(ENGINE, VERSION, info), engine_socket=sock(0o600, uid=1000))
    assert statuses(f, "engine-socket") == [C.WARN]


@pytest.mark.parametrize(
    ("other", "status"),
    [
        (sock(0o666), C.FAIL),
        (sock(0o660, gid=106, group_members=("alice",)), C.FAIL),
        (sock(0o600), C.WARN),
    ],
)
def test_another_socket_to_the_same_engine(other: C.PathFacts, status: str) -> None:
    extra = C.OtherSocket(dataclasses.replace(other, path="/var/run/docker.sock"), "-H unix://")
    findings = found(facts(other_sockets=(extra,)), "extra-engine-socket")
    assert [x.status for x in findings] == [status]
    assert "/var/run/docker.sock" in findings[0].message and findings[0].fix


def test_no_other_socket() -> None:
    assert statuses(facts(), "extra-engine-socket") == [C.OK]


@pytest.mark.parametrize(
    ("daemon", "status", "words"),
    [
        (C.DaemonFacts(7), C.OK, "no TCP address"),
        (C.DaemonFacts(7, listening_tcp=("127.0.0.1:2375",)), C.FAIL, "any local process"),
        (C.DaemonFacts(7, hosts=("tcp://127.0.0.1:2375",)), C.FAIL, "any local process"),
        (C.DaemonFacts(7, hosts=("tcp://localhost:2375",)), C.FAIL, "any local process"),
        (C.DaemonFacts(7, listening_tcp=("[::1]:2375",)), C.FAIL, "any local process"),
        (C.DaemonFacts(7, hosts=("tcp://0.0.0.0:2375",)), C.FAIL, "anyone who can reach"),
        (C.DaemonFacts(7, hosts=("tcp://0.0.0.0:2376",), tls_verify=True), C.WARN, "certificate"),
    ],
)
def test_tcp_listeners(daemon: C.DaemonFacts, status: str, words: str) -> None:
    findings = found(facts(daemons=(daemon,)), "engine-tcp")
    assert [x.status for x in findings] == [status]
    assert words in findings[0].message


def test_a_listener_given_on_the_command_line_and_seen_is_one_finding() -> None:
    daemon = C.DaemonFacts(7, hosts=("tcp://127.0.0.1:2375",), listening_tcp=("127.0.0.1:2375",))
    assert statuses(facts(daemons=(daemon,)), "engine-tcp") == [C.FAIL]


def test_dockerd_not_found() -> None:
    assert statuses(facts(daemons=None), "engine-tcp") == [C.WARN]
    assert statuses(facts(daemons=(C.DaemonFacts(7, ours=False),)), "engine-tcp") == [C.WARN]
    assert statuses(facts(daemons=(C.DaemonFacts(7, ours=False),)), "other-engines") == [C.WARN]
    assert statuses(facts(), "other-engines") == []


@pytest.mark.parametrize(
    ("info", "sysbox", "userns"),
    [
        (INFO_RUNC, C.WARN, C.WARN),
        ({**INFO_RUNC, "SecurityOptions": ["name=userns"]}, C.WARN, C.OK),
        ({**INFO_RUNC, "Runtimes": {"runc": {}, "sysbox-runc": {}}}, C.OK, C.OK),
        ({**INFO_RUNC, "SecurityOptions": ["name=rootless"]}, C.WARN, C.OK),
    ],
)
def test_isolation(info: dict[str, Any], sysbox: str, userns: str) -> None:
    f = facts(engine=C.EngineFacts(ENGINE, VERSION, info))
    assert statuses(f, "sysbox") == [sysbox]
    assert statuses(f, "userns-remap") == [userns]


@pytest.mark.parametrize(
    ("settings", "status", "words"),
    [
        (C.SettingsFacts("/s.json", sha256="ab" * 32), C.OK, "valid"),
        (C.SettingsFacts("/s.json", exists=False), C.WARN, "built-in default"),
        (
            C.SettingsFacts("/s.json", untrusted=("file /s.json is writable by group and others",)),
            C.FAIL,
            "non-root",
        ),
        (C.SettingsFacts("/s.json", error="bad JSON at line 1"), C.FAIL, "bad JSON"),
    ],
)
def test_the_settings_file(settings: C.SettingsFacts, status: str, words: str) -> None:
    findings = found(facts(settings=settings), "settings-file")
    assert [x.status for x in findings] == [status]
    assert words in findings[0].message


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (STATUS, [C.OK, C.OK]),
        ({**STATUS, "locked": False}, [C.OK, C.WARN]),
        ({**STATUS, "mode": "audit", "enforcing": False}, [C.OK, C.WARN]),
        ({**STATUS, "mode": "off", "enforcing": False}, [C.OK, C.FAIL]),
        ({**STATUS, "settingsError": "refusing it"}, [C.OK, C.OK, C.WARN]),
        ({**STATUS, "engine": {"socket": "/elsewhere.sock"}}, [C.OK, C.OK, C.WARN]),
        ({**STATUS, "engine": {"socket": ENGINE, "reachable": False}}, [C.OK, C.OK, C.FAIL]),
    ],
)
def test_the_agent(status: dict[str, Any], expected: list[str]) -> None:
    f = facts(agent=C.AgentFacts("/c.sock", status))
    got = [x.status for x in C.diagnose(f) if x.check in ("agent-running", "agent-enforcing")]
    assert got == expected


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (None, []),
        ({"compiled": True, "stale": False, "summary": "compiled with mypyc (m)"}, [C.OK]),
        ({"compiled": False, "stale": False, "summary": "pure Python (not built)"}, [C.OK]),
        ({"compiled": False, "stale": True, "summary": "pure Python (x.py changed)"}, [C.WARN]),
    ],
)
def test_the_agents_code(code: dict[str, Any] | None, expected: list[str]) -> None:
    status = {**STATUS, "agent": {**STATUS["agent"], "code": code}}
    findings = found(facts(agent=C.AgentFacts("/c.sock", status)), "agent-code")
    assert [x.status for x in findings] == expected
    if code:
        assert code["summary"] in findings[0].message
    assert C.exit_status(findings) == 0  # performance only, never a failure


def test_the_agent_is_not_running() -> None:
    f = facts(agent=C.AgentFacts("/c.sock", None, "nothing answers"))
    (finding,) = found(f, "agent-running")
    assert finding.status == C.FAIL and "nothing answers" in finding.message
    assert found(f, "agent-enforcing") == []
    assert C.exit_status(C.diagnose(f)) == 1


@pytest.mark.parametrize(
    ("name", "mode", "status"),
    [
        ("control", 0o600, C.OK),
        ("control", 0o660, C.OK),
        ("control", 0o666, C.WARN),
        ("container", 0o666, C.OK),
        ("host", 0o660, C.OK),
        ("host", 0o666, C.OK),
    ],
)
def test_the_agents_sockets(name: str, mode: int, status: str) -> None:
    s = dataclasses.replace(sock(mode), path=f"/run/eci-agent/{name}.sock")
    assert statuses(facts(agent_sockets={name: s}), "agent-socket") == [status]


def test_a_missing_agent_socket() -> None:
    s = C.PathFacts("/run/eci-agent/x.sock", exists=False, is_socket=False)
    assert statuses(facts(agent_sockets={"host": s}), "agent-socket") == [C.FAIL]


# -- the parsers the gatherer uses -----------------------------------------------------------


def test_groups_and_members() -> None:
    groups = C.parse_group_file("root:x:0:\ndocker:x:106:alice,bob\nbroken\nstaff:x:50:\n")
    primary = C.parse_passwd_primary(
        "root:x:0:0::/root:/bin/sh\ncarol:x:1001:106::/home/carol:/bin/sh\n"
    )
    assert C.group_members(106, groups, primary) == ("docker", ("alice", "bob", "carol"))
    assert C.group_members(50, groups, primary) == ("staff", ())
    assert C.group_members(0, groups, primary) == ("root", ("root",))
    assert C.group_members(999, groups, primary) == ("999", ())


@pytest.mark.parametrize(
    ("argv", "hosts", "config", "tls"),
    [
        (["dockerd"], [], None, False),
        (["dockerd", "-H", "fd://"], ["fd://"], None, False),
        (
            ["dockerd", "-Hunix:///a.sock", "--host=tcp://0.0.0.0:2375"],
            ["unix:///a.sock", "tcp://0.0.0.0:2375"],
            None,
            False,
        ),
        (["dockerd", "-H=tcp://1.2.3.4:2376", "--tlsverify"], ["tcp://1.2.3.4:2376"], None, True),
        (
            ["dockerd", "--host", "unix:///b.sock", "--config-file=/c.json"],
            ["unix:///b.sock"],
            "/c.json",
            False,
        ),
        (["dockerd", "--config-file", "/d.json", "--debug"], [], "/d.json", False),
    ],
)
def test_dockerd_flags(argv: list[str], hosts: list[str], config: str | None, tls: bool) -> None:
    assert C.daemon_flags(argv) == (hosts, config, tls)


def test_daemon_json_hosts() -> None:
    assert C.config_hosts('{"hosts": ["tcp://127.0.0.1:2375", 3], "tlsverify": true}') == (
        ["tcp://127.0.0.1:2375"],
        True,
    )
    assert C.config_hosts("not json") == ([], False)
    assert C.config_hosts("[]") == ([], False)


PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0947 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0000000000000000 100 0 0 10 0
   1: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 222 1 0000000000000000 100 0 0 10 0
   2: 0100007F:0947 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 111 1 0000000000000000 100 0 0 10 0
"""
PROC_NET_TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:0947 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 333 1 0000000000000000 100 0 0 10 0
"""


def test_listening_sockets_from_proc() -> None:
    assert C.parse_proc_net_tcp(PROC_NET_TCP, {111}) == ["127.0.0.1:2375"]
    assert C.parse_proc_net_tcp(PROC_NET_TCP, {222}) == ["0.0.0.0:8080"]
    assert C.parse_proc_net_tcp(PROC_NET_TCP, {999}) == []
    assert C.parse_proc_net_tcp(PROC_NET_TCP6, {333}) == ["[::1]:2375"]


def test_reach() -> None:
    assert C.reach(sock(0o666)) == C.Reach(True, False, None)
    assert C.reach(sock(0o666, folders=CLOSED)) == C.Reach(False, False, "/run/eci/engine")
    assert C.reach(sock(0o660, gid=106)).group is True


@pytest.mark.parametrize(
    ("volume", "status", "words"),
    [
        (["local"], "ok", "no volume driver but local"),
        (["local", "evil:latest", "vieux/sshfs:latest"], "warn", "evil:latest, vieux/sshfs:latest"),
        (None, "ok", "no volume driver but local"),
    ],
)
def test_volume_plugins(volume: Any, status: str, words: str) -> None:
    info = {**INFO_RUNC, "Plugins": {"Volume": volume, "Network": ["bridge"]}}
    (finding,) = found(facts(engine=C.EngineFacts(ENGINE, VERSION, info)), "volume-plugins")
    assert finding.status == status and words in finding.message, finding


def test_volume_plugins_from_the_plugin_list() -> None:
    listed = (
        {"Name": "evil:latest", "Enabled": True,
         "Config": {"Interface": {"Types": ["docker.volumedriver/1.0"]}}},
        {"Name": "off:latest", "Enabled": False,
         "Config": {"Interface": {"Types": ["docker.volumedriver/1.0"]}}},
        {"Name": "logs:latest", "Enabled": True,
         "Config": {"Interface": {"Types": ["docker.logdriver/1.0"]}}},
    )  # fmt: skip
    engine = C.EngineFacts(ENGINE, VERSION, INFO_RUNC, plugins=listed)
    (finding,) = found(facts(engine=engine), "volume-plugins")
    assert finding.status == "warn" and "evil:latest" in finding.message, finding
    assert "off:latest" not in finding.message and "logs" not in finding.message


@pytest.mark.parametrize(
    ("unpinned", "status", "words"),
    [
        ((), "ok", "no container, service or volume binds a path a user can change unpinned"),
        ((("web", "/home/u/site"), ("web", "/home/u/conf"), ("db", "/tmp/u/data")), "warn",
         "2 container(s) bind a path"),
        ((("web", "/home/u/site"), ("service api", "/home/u/api"), ("volume data", "/tmp/u/d"),
          ("volume logs", "/tmp/u/l")), "warn",
         "1 container(s), 1 service(s), 2 volume(s) bind a path"),
        ((("service web", "/home/u/site"),), "warn", "1 service(s) bind a path"),
        (tuple((f"c{i}", f"/home/u/{i}") for i in range(7)), "warn", "and 2 more"),
    ],
    ids=["none", "two-containers", "all-kinds", "service-only", "many"],
)  # fmt: skip
def test_unpinned_binds(unpinned: Any, status: str, words: str) -> None:
    engine = C.EngineFacts(ENGINE, VERSION, INFO_RUNC, unpinned=unpinned)
    (finding,) = found(facts(engine=engine), "unpinned-binds")
    assert finding.status == status and words in finding.message, finding


def test_unpinned_binds_not_read_says_nothing() -> None:
    assert found(facts(engine=C.EngineFacts(ENGINE, VERSION, INFO_RUNC)), "unpinned-binds") == []


def test_the_engine_keeps_bind_sources_in_services_and_bind_volumes() -> None:
    """What `doctor` reads as kept bind sources from `/services` and `/volumes` answers."""
    from agent.doctor.gather import _service_sources, _volume_sources

    def spec(name: str, *mounts: tuple[str, str]) -> dict[str, Any]:
        task = {"ContainerSpec": {"Mounts": [{"Type": t, "Source": s} for t, s in mounts]}}
        return {"Name": name, "TaskTemplate": task}

    services = [
        {"ID": "a" * 25, "Spec": spec("web", ("bind", "/home/u/site"), ("volume", "data")),
         "PreviousSpec": spec("web", ("bind", "/home/u/old"), ("bind", "/home/u/site"))},
        {"ID": "b" * 25, "Spec": spec("", ("tmpfs", ""))},
    ]  # fmt: skip
    assert _service_sources(services) == (
        ("service web", "/home/u/site"),
        ("service web", "/home/u/old"),
    )
    volumes = {
        "Volumes": [
            {"Name": "site", "Driver": "local",
             "Options": {"type": "none", "o": "bind", "device": "/home/u/site"}},
            {"Name": "r", "Driver": "local",
             "Options": {"type": "none", "o": "rbind,ro", "device": "/tmp/u"}},
            {"Name": "plain", "Driver": "local", "Options": None},
            {"Name": "mem", "Driver": "local", "Options": {"type": "tmpfs", "device": "tmpfs"}},
            {"Name": "disk", "Driver": "local", "Options": {"type": "ext4", "device": "/dev/sda"}},
            {"Name": "nfs", "Driver": "other", "Options": {"o": "bind", "device": "/home/u"}},
        ]
    }  # fmt: skip
    assert _volume_sources(volumes) == (("volume site", "/home/u/site"), ("volume r", "/tmp/u"))
    assert _volume_sources({"Volumes": None}) == () and _service_sources(None) == ()


@pytest.mark.parametrize(
    ("links", "status", "words"),
    [
        ((1, 1), "ok", "protections are on"),
        ((0, 1), "warn", "fs.protected_hardlinks is 0"),
        ((0, 0), "warn", "fs.protected_symlinks is 0 too"),
        ((1, 0), "warn", "fs.protected_symlinks is 0: root processes follow"),
        ((None, 1), "ok", "protections are on"),
    ],
    ids=["both-on", "hardlinks-off", "both-off", "symlinks-off", "hardlinks-unread"],
)
def test_protected_links(links: Any, status: str, words: str) -> None:
    (finding,) = found(facts(protected_links=links), "protected-links")
    assert finding.status == status and words in finding.message, finding
    assert status == "ok" or "sysctl -w" in finding.fix


def test_protected_links_not_read_says_nothing() -> None:
    assert found(facts(), "protected-links") == []
