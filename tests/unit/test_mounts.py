"""agent.policy.mounts: what a create body asks to mount, and which paths expose the socket."""

from __future__ import annotations

import pytest

from agent.policy import gojson
from agent.policy.gojson import GoObject
from agent.policy.mounts import (
    FromContainer,
    HostPath,
    MountIntent,
    NamedVolume,
    ProtectedSocket,
    ResolvedPath,
    UnreadableMount,
    clean_host_path,
    create_mounts,
    exposed_socket,
    local_volume_mount,
    may_name_socket,
    parse_bind_spec,
    parse_mountinfo,
    plugin_mounts,
    reaches_procfs,
    socket_aliases,
    volume_create_mount,
)

SOCK = "/var/run/docker.sock"


def body(text: str) -> GoObject:
    value = gojson.loads(text)
    assert isinstance(value, GoObject)
    return value


def hc(inner: str) -> str:
    return '{"Image": "alpine", "HostConfig": {' + inner + "}}"


def local_volume(options: str, name: str = '"Name": "local", ') -> str:
    return (
        '"Mounts": [{"Type": "volume", "Source": "sockvol", "Target": "/s", '
        '"VolumeOptions": {"DriverConfig": {' + name + '"Options": ' + options + "}}}]"
    )


B0 = "HostConfig.Binds[0]"
M0 = "HostConfig.Mounts[0]"
DEVICE_VIA = f"{M0}.VolumeOptions.DriverConfig"

# (case id, JSON body, the intents create_mounts must return, in order)
CREATE_CASES: list[tuple[str, str, tuple[MountIntent, ...]]] = [
    ("empty body", "{}", ()),
    ("no mounts", '{"Image": "alpine", "HostConfig": {"Memory": 1}}', ()),
    ("HostConfig null", '{"HostConfig": null}', ()),
    ("Binds null", hc('"Binds": null'), ()),
    ("Binds empty", hc('"Binds": []'), ()),
    # Binds
    ("bind socket", hc(f'"Binds": ["{SOCK}:{SOCK}"]'), (HostPath(SOCK, B0),)),
    ("bind folder", hc('"Binds": ["/var/run:/host/run"]'), (HostPath("/var/run", B0),)),
    ("bind with mode", hc(f'"Binds": ["{SOCK}:/s:ro"]'), (HostPath(SOCK, B0),)),
    ("bind with z,rshared", hc('"Binds": ["/:/host:rw,z,rshared"]'), (HostPath("/", B0),)),
    ("backslash source", hc('"Binds": ["\\\\host:/x"]'), (HostPath("\\host", B0),)),
    ("named volume", hc('"Binds": ["data:/data"]'), (NamedVolume("data", B0),)),
    ("named volume, mode", hc('"Binds": ["data:/data:nocopy"]'), (NamedVolume("data", B0),)),
    ("relative is a volume name", hc('"Binds": ["var/run:/r"]'), (NamedVolume("var/run", B0),)),
    ("anonymous volume", hc(f'"Binds": ["{SOCK}"]'), ()),
    (
        "null entry skipped",
        hc('"Binds": [null, "/etc:/e"]'),
        (HostPath("/etc", "HostConfig.Binds[1]"),),
    ),
    (
        "several binds keep their index",
        hc(f'"Binds": ["/tmp:/t", "v:/v", "{SOCK}:/s"]'),
        (
            HostPath("/tmp", B0),
            NamedVolume("v", "HostConfig.Binds[1]"),
            HostPath(SOCK, "HostConfig.Binds[2]"),
        ),
    ),
    # Mounts
    (
        "Mounts bind",
        hc(f'"Mounts": [{{"Type": "bind", "Source": "{SOCK}", "Target": "/s"}}]'),
        (HostPath(SOCK, f"{M0}.Source"),),
    ),
    (
        "Mounts npipe",
        hc('"Mounts": [{"Type": "npipe", "Source": "\\\\\\\\.\\\\pipe\\\\docker_engine"}]'),
        (HostPath("\\\\.\\pipe\\docker_engine", f"{M0}.Source"),),
    ),
    (
        "Mounts volume",
        hc('"Mounts": [{"Type": "volume", "Source": "data", "Target": "/d"}]'),
        (NamedVolume("data", f"{M0}.Source"),),
    ),
    (
        "Mounts anonymous volume",
        hc('"Mounts": [{"Type": "volume", "Target": "/d"}]'),
        (),
    ),
    (
        "inline local volume with device",
        hc(local_volume('{"type": "none", "o": "bind", "device": "/var/run"}')),
        (
            HostPath("/var/run", DEVICE_VIA, rewritable=False),
            NamedVolume("sockvol", f"{M0}.Source"),
        ),
    ),
    (
        "inline volume, driver name omitted (local)",
        hc(local_volume(f'{{"o": "bind", "device": "{SOCK}"}}', name="")),
        (HostPath(SOCK, DEVICE_VIA, rewritable=False), NamedVolume("sockvol", f"{M0}.Source")),
    ),
    (
        "inline volume, driver name empty (local)",
        hc(local_volume(f'{{"o": "rbind", "device": "{SOCK}"}}', name='"Name": "", ')),
        (HostPath(SOCK, DEVICE_VIA, rewritable=False), NamedVolume("sockvol", f"{M0}.Source")),
    ),
    (
        "inline volume, last device key wins (a Go map)",
        hc(local_volume(f'{{"o": "bind", "device": "/tmp", "device": "{SOCK}"}}')),
        (HostPath(SOCK, DEVICE_VIA, rewritable=False), NamedVolume("sockvol", f"{M0}.Source")),
    ),
    (
        "inline volume, map keys are exact",
        hc(local_volume(f'{{"Device": "{SOCK}"}}')),
        (NamedVolume("sockvol", f"{M0}.Source"),),
    ),
    (
        "inline volume, empty device",
        hc(local_volume('{"device": ""}')),
        (NamedVolume("sockvol", f"{M0}.Source"),),
    ),
    (
        "inline volume, other driver",
        hc(local_volume(f'{{"device": "{SOCK}"}}', name='"Name": "rexray", ')),
        (NamedVolume("sockvol", f"{M0}.Source"),),
    ),
    (
        "anonymous inline local volume with device",
        hc(
            '"Mounts": [{"Type": "volume", "Target": "/s", "VolumeOptions": '
            f'{{"DriverConfig": {{"Options": {{"o": "ro,bind", "device": "{SOCK}"}}}}}}}}]'
        ),
        (HostPath(SOCK, DEVICE_VIA, rewritable=False),),
    ),
    ("tmpfs ignored", hc('"Mounts": [{"Type": "tmpfs", "Target": "/run"}]'), ()),
    ("tmpfs with a source ignored", hc(f'"Mounts": [{{"Type": "tmpfs", "Source": "{SOCK}"}}]'), ()),
    ("image ignored", hc('"Mounts": [{"Type": "image", "Source": "alpine", "Target": "/i"}]'), ()),
    ("cluster ignored", hc('"Mounts": [{"Type": "cluster", "Source": "c", "Target": "/c"}]'), ()),
    (
        "unknown type, absolute source",
        hc(f'"Mounts": [{{"Type": "BIND", "Source": "{SOCK}", "Target": "/s"}}]'),
        (HostPath(SOCK, f"{M0}.Source"),),
    ),
    (
        "missing type, absolute source",
        hc(f'"Mounts": [{{"Source": "{SOCK}", "Target": "/s"}}]'),
        (HostPath(SOCK, f"{M0}.Source"),),
    ),
    (
        "unknown type, relative source",
        hc('"Mounts": [{"Type": "future", "Source": "thing", "Target": "/s"}]'),
        (),
    ),
    ("null mount skipped", hc('"Mounts": [null]'), ()),
    (
        "mount fields folded",
        hc(f'"mounts": [{{"TYPE": "bind", "source": "{SOCK}"}}]'),
        (HostPath(SOCK, f"{M0}.Source"),),
    ),
    (
        "mount Source given twice: last wins",
        hc(f'"Mounts": [{{"Type": "bind", "Source": "/tmp", "Source": "{SOCK}"}}]'),
        (HostPath(SOCK, f"{M0}.Source"),),
    ),
    (
        "mount Type given twice: last wins",
        hc(f'"Mounts": [{{"Type": "tmpfs", "type": "bind", "Source": "{SOCK}"}}]'),
        (HostPath(SOCK, f"{M0}.Source"),),
    ),
    # VolumesFrom
    (
        "VolumesFrom with :ro",
        hc('"VolumesFrom": ["socketeer:ro"]'),
        (FromContainer("socketeer", "HostConfig.VolumesFrom[0]"),),
    ),
    (
        "VolumesFrom plain and :rw",
        hc('"VolumesFrom": ["a", "b:rw"]'),
        (
            FromContainer("a", "HostConfig.VolumesFrom[0]"),
            FromContainer("b", "HostConfig.VolumesFrom[1]"),
        ),
    ),
    ("VolumesFrom null entry", hc('"VolumesFrom": [null]'), ()),
    # legacy Volumes map
    (
        "Volumes key with ':' is a bind",
        f'{{"Volumes": {{"{SOCK}:/s": {{}}}}}}',
        (HostPath(SOCK, f"Volumes[{SOCK + ':/s'!r}]", rewritable=False),),
    ),
    (
        "Volumes key naming a volume",
        '{"Volumes": {"data:/d": {}}}',
        (NamedVolume("data", "Volumes['data:/d']"),),
    ),
    ("Volumes container path only", f'{{"Volumes": {{"{SOCK}": {{}}}}}}', ()),
    ("Volumes null", '{"Volumes": null}', ()),
    # Go's case-insensitive, last-wins, merging field rules
    ("lower-case keys", f'{{"hostconfig": {{"binds": ["{SOCK}:/s"]}}}}', (HostPath(SOCK, B0),)),
    ("upper-case keys", f'{{"HOSTCONFIG": {{"BINDS": ["{SOCK}:/s"]}}}}', (HostPath(SOCK, B0),)),
    ("escaped key", hc(f'"\\u0042inds": ["{SOCK}:/s"]'), (HostPath(SOCK, B0),)),
    (
        "long s folds to s",
        hc(f'"Mount\\u017f": [{{"Type": "bind", "Source": "{SOCK}"}}]'),
        (HostPath(SOCK, f"{M0}.Source"),),
    ),
    (
        "Binds twice: last wins",
        hc(f'"Binds": ["{SOCK}:/s"], "Binds": ["/tmp:/t"]'),
        (HostPath("/tmp", B0),),
    ),
    (
        "Binds twice, other case: last wins",
        hc(f'"Binds": ["/tmp:/t"], "binds": ["{SOCK}:/s"]'),
        (HostPath(SOCK, B0),),
    ),
    (
        "Binds then null: null does not erase",
        hc(f'"Binds": ["{SOCK}:/s"], "Binds": null'),
        (HostPath(SOCK, B0),),
    ),
    (
        "HostConfig twice: merged",
        f'{{"HostConfig": {{"Binds": ["{SOCK}:/s"]}}, "HostConfig": {{"Memory": 1}}}}',
        (HostPath(SOCK, B0),),
    ),
    (
        "HostConfig twice, other case: merged",
        '{"HostConfig": {"Binds": ["/tmp:/t"]}, '
        f'"hostConfig": {{"Mounts": [{{"Type": "bind", "Source": "{SOCK}"}}]}}}}',
        (HostPath("/tmp", B0), HostPath(SOCK, f"{M0}.Source")),
    ),
    (
        "HostConfig then null: null does not erase",
        f'{{"HostConfig": {{"Binds": ["{SOCK}:/s"]}}, "HostConfig": null}}',
        (HostPath(SOCK, B0),),
    ),
    # HostConfig fields at the top level: read by engines before Docker 27, never rewritable
    (
        "top-level Binds",
        f'{{"Image": "alpine", "Binds": ["{SOCK}:{SOCK}"]}}',
        (HostPath(SOCK, "(top level).Binds[0]", rewritable=False),),
    ),
    (
        "top-level binds, HostConfig null",
        f'{{"Image": "alpine", "HostConfig": null, "binds": ["{SOCK}:/s"]}}',
        (HostPath(SOCK, "(top level).Binds[0]", rewritable=False),),
    ),
    (
        "top-level Mounts",
        f'{{"Mounts": [{{"Type": "bind", "Source": "{SOCK}"}}]}}',
        (HostPath(SOCK, "(top level).Mounts[0].Source", rewritable=False),),
    ),
    (
        "top-level VolumesFrom",
        '{"VolumesFrom": ["socketeer"]}',
        (FromContainer("socketeer", "(top level).VolumesFrom[0]"),),
    ),
    (
        "top-level named volume",
        '{"Binds": ["data:/d"]}',
        (NamedVolume("data", "(top level).Binds[0]"),),
    ),
    (
        "all the routes at once",
        '{"Volumes": {"/etc:/e": {}}, "HostConfig": {"Binds": ["/a:/a"], '
        '"Mounts": [{"Type": "bind", "Source": "/b"}], "VolumesFrom": ["c"]}}',
        (
            HostPath("/a", B0),
            HostPath("/b", f"{M0}.Source"),
            FromContainer("c", "HostConfig.VolumesFrom[0]"),
            HostPath("/etc", "Volumes['/etc:/e']", rewritable=False),
        ),
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"), [pytest.param(t, e, id=i) for i, t, e in CREATE_CASES]
)
def test_create_mounts(text: str, expected: tuple[MountIntent, ...]) -> None:
    assert create_mounts(body(text)) == expected


# (case id, JSON body, a word the error must contain)
UNREADABLE_CASES: list[tuple[str, str, str]] = [
    ("more than three parts", hc('"Binds": ["/a:/b:ro:extra"]'), "src:dst[:mode]"),
    ("empty source", hc('"Binds": [":/x"]'), "empty source"),
    ("empty source with mode", hc('"Binds": [":/x:ro"]'), "empty source"),
    ("Binds is a string", hc(f'"Binds": "{SOCK}:/s"'), "expected an array"),
    ("Binds is an object", hc('"Binds": {"a": 1}'), "expected an array"),
    ("Binds entry is a number", hc('"Binds": [1]'), "expected a string"),
    ("Binds entry is a list", hc(f'"Binds": [["{SOCK}:/s"]]'), "expected a string"),
    ("Mounts is an object", hc('"Mounts": {"Type": "bind"}'), "expected an array"),
    ("Mounts entry is a string", hc(f'"Mounts": ["{SOCK}"]'), "expected an object"),
    ("Mount Type is a number", hc('"Mounts": [{"Type": 1, "Source": "/x"}]'), "strings"),
    ("Mount Source is a list", hc('"Mounts": [{"Type": "bind", "Source": ["/x"]}]'), "strings"),
    ("Mount Source is null", hc('"Mounts": [{"Type": "bind", "Source": null}]'), "strings"),
    ("VolumesFrom is a string", hc('"VolumesFrom": "other"'), "expected an array"),
    ("VolumesFrom entry empty", hc('"VolumesFrom": [""]'), "container name"),
    ("VolumesFrom entry number", hc('"VolumesFrom": [7]'), "container name"),
    ("HostConfig is a list", '{"HostConfig": []}', "expected an object"),
    ("HostConfig is a string", '{"HostConfig": "x"}', "expected an object"),
    ("Volumes is a list", f'{{"Volumes": ["{SOCK}:/s"]}}', "expected an object"),
    ("top-level Binds is a string", f'{{"Binds": "{SOCK}:/s"}}', "expected an array"),
    (
        "inline volume, device without a type",
        hc(local_volume(f'{{"device": "{SOCK}"}}')),
        "type ''",
    ),
    ("inline volume, procfs", hc(local_volume('{"type": "proc", "device": "proc"}')), "'proc'"),
    ("inline volume, a disk", hc(local_volume('{"type": "ext4", "device": "/dev/vda"}')), "'ext4'"),
    (
        "inline volume, overlay of host folders",
        hc(local_volume('{"type": "overlay", "device": "x", "o": "lowerdir=/run"}')),
        "'overlay'",
    ),
    (
        "inline volume, bind flag with a space is not a bind",
        hc(local_volume('{"type": "proc", "device": "/tmp", "o": " bind"}')),
        "'proc'",
    ),
    (
        "inline volume, relative bind device",
        hc(local_volume('{"type": "none", "o": "bind", "device": "run"}')),
        "not an absolute path",
    ),
    ("inline volume, option not a string", hc(local_volume('{"type": 5}')), "must be a string"),
]


@pytest.mark.parametrize(
    ("text", "why"), [pytest.param(t, w, id=i) for i, t, w in UNREADABLE_CASES]
)
def test_create_mounts_unreadable(text: str, why: str) -> None:
    with pytest.raises(UnreadableMount) as err:
        create_mounts(body(text))
    assert why in str(err.value)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (f"{SOCK}:/s", HostPath(SOCK, "w")),
        (f"{SOCK}:/s:ro", HostPath(SOCK, "w")),
        ("C:\\data", NamedVolume("C", "w")),  # two parts on Linux: `C` is a volume name
        ("vol:/d", NamedVolume("vol", "w")),
        ("/only/a/container/path", None),
        ("vol", None),
    ],
)
def test_parse_bind_spec(spec: str, expected: MountIntent | None) -> None:
    assert parse_bind_spec(spec, "w") == expected


BIND_OPTS = '"type": "none", "o": "bind", '


@pytest.mark.parametrize(
    ("text", "device"),
    [
        (f'{{"Name": "s", "DriverOpts": {{{BIND_OPTS}"device": "{SOCK}"}}}}', SOCK),
        (f'{{"Driver": "local", "DriverOpts": {{"o": "bind", "device": "{SOCK}"}}}}', SOCK),
        (f'{{"Driver": "", "DriverOpts": {{"o": "nodev,rbind", "device": "{SOCK}"}}}}', SOCK),
        (f'{{"driveropts": {{{BIND_OPTS}"device": "{SOCK}"}}}}', SOCK),  # field names fold
        (
            f'{{"DriverOpts": {{{BIND_OPTS}"device": "/tmp"}}, "DriverOpts": {{"device": "{SOCK}"}}}}',
            SOCK,  # the second object merges into the first map
        ),
        (f'{{"Driver": "nfs", "DriverOpts": {{"device": "{SOCK}"}}}}', None),
        (f'{{"DriverOpts": {{"DEVICE": "{SOCK}"}}}}', None),
        ('{"DriverOpts": {"device": ""}}', None),
        ('{"DriverOpts": {"type": "tmpfs", "device": "tmpfs", "o": "size=1m"}}', None),
        ('{"DriverOpts": {"type": "nfs", "device": ":/export", "o": "addr=10.0.0.1"}}', None),
        ('{"DriverOpts": {"type": "cifs", "device": "//srv/share"}}', None),
        ('{"DriverOpts": {"size": "10G"}}', None),
        ('{"DriverOpts": null}', None),
        ('{"Name": "plain"}', None),
    ],
)
def test_volume_create_mount(text: str, device: str | None) -> None:
    mount = volume_create_mount(body(text))
    assert (mount.source if mount else None) == device
    if mount is not None:
        assert not mount.rewritable


@pytest.mark.parametrize(
    "options",
    [
        {"device": SOCK},
        {"type": "ext4", "device": "/dev/sda1"},
        {"type": "proc", "device": "proc"},
        {"type": "sysfs", "device": "sysfs"},
        {"type": "none", "o": "ro", "device": "/run"},
        {"type": "none", "o": "bind", "device": "../run"},
        {"device": 5},
    ],
)
def test_local_volume_mount_refuses_what_it_cannot_judge(options: dict[str, object]) -> None:
    with pytest.raises(UnreadableMount):
        local_volume_mount("local", options, "v")


def test_local_volume_mount_reads_inspect_dicts_and_ignores_plugins() -> None:
    assert local_volume_mount("", {"o": "bind", "device": "/run"}, "v") == HostPath(
        "/run", "v", rewritable=False
    )
    assert local_volume_mount("rexray", {"type": "proc"}, "v") is None
    assert local_volume_mount("local", None, "v") is None


def test_plugin_mounts() -> None:
    info = {
        "Name": "p:latest",
        "Config": {"Mounts": [{"Source": "/run", "Type": "bind"}, {"Source": None}]},
        "Settings": {"Mounts": [{"Source": SOCK, "Type": "bind"}, {"Source": "tmpfs"}]},
    }
    assert plugin_mounts(info, "p") == (
        HostPath(SOCK, "plugin p Settings.Mounts[0]", rewritable=False),
        HostPath("/run", "plugin p Config.Mounts[0]", rewritable=False),
    )
    with pytest.raises(UnreadableMount):
        plugin_mounts({"Settings": {"Mounts": [{"Source": "rel", "Type": "bind"}]}}, "p")
    assert plugin_mounts({}, "p") == ()


# --------------------------------------------------------------------------------------------
# exposed_socket
# --------------------------------------------------------------------------------------------

INODE = (2049, 131077)
ENGINE = ProtectedSocket(SOCK, "/run/docker.sock", INODE)
AGENT = ProtectedSocket("/run/eci-agent/docker.sock", "/run/eci-agent/docker.sock", (24, 7), "eci")
PROTECTED = (ENGINE, AGENT)


def rp(
    source: str, resolved: str | None = None, inode: tuple[int, int] | None = None
) -> ResolvedPath:
    return ResolvedPath(source, resolved if resolved is not None else source, inode)


# (case id, resolved path, the socket exposed or None, whether it is the socket itself)
EXPOSED_CASES: list[tuple[str, ResolvedPath, ProtectedSocket | None, bool]] = [
    ("exact path", rp(SOCK, "/run/docker.sock", INODE), ENGINE, True),
    ("exact path, unresolved", rp(SOCK), ENGINE, True),
    ("resolved path", rp("/run/docker.sock"), ENGINE, True),
    ("symlink to the socket", rp("/home/u/link.sock", "/run/docker.sock"), ENGINE, True),
    ("hard link (same inode)", rp("/tmp/innocent", "/tmp/innocent", INODE), ENGINE, True),
    ("trailing slash", rp(SOCK + "/"), ENGINE, True),
    ("double leading slash", rp("//var/run/docker.sock"), ENGINE, True),
    ("triple leading slash", rp("///var/run/docker.sock"), ENGINE, True),
    ("dot segments", rp("/var/./run/../run/docker.sock"), ENGINE, True),
    ("the agent's socket", rp("/run/eci-agent/docker.sock"), AGENT, True),
    ("parent /var/run", rp("/var/run", "/run"), ENGINE, False),
    ("parent /var/run, unresolved", rp("/var/run"), ENGINE, False),
    ("parent /run", rp("/run"), ENGINE, False),
    ("parent /run/", rp("/run/"), ENGINE, False),
    ("parent /var", rp("/var"), ENGINE, False),
    ("root /", rp("/"), ENGINE, False),
    ("root //", rp("//"), ENGINE, False),
    ("symlink to a parent", rp("/home/u/r", "/run"), ENGINE, False),
    ("the agent's folder", rp("/run/eci-agent"), AGENT, False),
    ("/run holds both: the first listed wins", rp("/run"), ENGINE, False),
    ("shares a prefix: docker.sock2", rp("/var/run/docker.sock2"), None, False),
    ("shares a prefix: /var/ru", rp("/var/ru"), None, False),
    ("shares a prefix: /ru", rp("/ru"), None, False),
    ("sibling file", rp("/var/run/other.sock"), None, False),
    ("unrelated", rp("/home/u/project", "/home/u/project", (2049, 99)), None, False),
    ("under the socket path", rp(SOCK + "/x"), None, False),
    ("relative path", rp("var/run/docker.sock"), None, False),
]


@pytest.mark.parametrize(
    ("path", "sock", "exact"), [pytest.param(p, s, e, id=i) for i, p, s, e in EXPOSED_CASES]
)
def test_exposed_socket(path: ResolvedPath, sock: ProtectedSocket | None, exact: bool) -> None:
    hit = exposed_socket(path, PROTECTED)
    if sock is None:
        assert hit is None
    else:
        assert hit == (sock, exact)


def test_exposed_socket_inode_needs_both_sides() -> None:
    no_inode = ProtectedSocket(SOCK, SOCK, None)
    assert exposed_socket(rp("/tmp/x", "/tmp/x", INODE), (no_inode,)) is None
    assert exposed_socket(rp("/tmp/x", "/tmp/x", None), (ENGINE,)) is None


def test_exposed_socket_no_protected_sockets() -> None:
    assert exposed_socket(rp("/"), ()) is None


@pytest.mark.parametrize(
    ("path", "cleaned"),
    [
        ("//var/run/docker.sock", SOCK),
        ("///var/run/docker.sock", SOCK),
        ("/var/run/docker.sock/", SOCK),
        ("/var//run/./docker.sock", SOCK),
        ("/var/run/../run/docker.sock", SOCK),
        ("/../var/run/docker.sock", SOCK),
        ("/", "/"),
        ("//", "/"),
    ],
)
def test_clean_host_path(path: str, cleaned: str) -> None:
    assert clean_host_path(path) == cleaned


def test_exposed_socket_hard_links_put_every_folder_of_its_filesystem_in_doubt() -> None:
    linked = ProtectedSocket(SOCK, "/run/docker.sock", INODE, links=2)
    folder = ResolvedPath("/home/u/d", "/home/u/d", (INODE[0], 5), is_dir=True)
    assert exposed_socket(folder, (linked,)) == (linked, False)
    assert exposed_socket(folder, (ENGINE,)) is None  # one link: only its own folders
    other_fs = ResolvedPath("/mnt/d", "/mnt/d", (99, 5), is_dir=True)
    assert exposed_socket(other_fs, (linked,)) is None
    a_file = ResolvedPath("/home/u/f", "/home/u/f", (INODE[0], 6))
    assert exposed_socket(a_file, (linked,)) is None


def test_exposed_socket_aliases_from_the_mount_table() -> None:
    aliased = ProtectedSocket(SOCK, "/run/docker.sock", INODE, aliases=("/srv/x/run/docker.sock",))
    assert exposed_socket(rp("/srv/x"), (aliased,)) == (aliased, False)
    assert exposed_socket(rp("/srv/x/run/docker.sock"), (aliased,)) == (aliased, True)
    assert exposed_socket(rp("/srv/y"), (aliased,)) is None


MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
26 24 0:24 / /dev/pts rw,relatime - devpts devpts rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
40 27 0:30 / /run rw,nosuid shared:5 - tmpfs tmpfs rw,mode=755
41 27 0:30 / /srv/x/run rw,nosuid shared:5 - tmpfs tmpfs rw,mode=755
42 27 0:30 /user /srv/y rw - tmpfs tmpfs rw
43 27 254:0 /home/u /srv/with\\040space rw - ext4 /dev/vda rw
44 27 0:45 / /var/lib/chroot/proc rw - proc proc rw
bad line
"""


def test_parse_mountinfo() -> None:
    table = parse_mountinfo(MOUNTINFO)
    assert len(table) == 8
    assert table[0].mount_point == "/proc" and table[0].fstype == "proc"
    assert table[6].mount_point == "/srv/with space" and table[6].root == "/home/u"
    assert table[2].dev == (254, 0)


@pytest.mark.parametrize("odd", ["\r", "\x0b", "\x0c", "\x1c", "\x85", "\u2028"])
def test_parse_mountinfo_splits_at_lf_and_space_only(odd: str) -> None:
    # The kernel escapes only space, tab, LF and backslash in paths: any other character is
    # part of the path, not a line or field break.
    text = f"45 27 0:30 / /srv/a{odd}b rw - tmpfs tmpfs rw\n46 27 0:30 / /z rw - tmpfs tmpfs rw\n"
    table = parse_mountinfo(text)
    assert [e.mount_point for e in table] == [f"/srv/a{odd}b", "/z"]
    assert table[0].dev == (0, 30) and table[0].fstype == "tmpfs"


def test_may_name_socket() -> None:
    sockets = ("/var/run/docker.sock", "/run/docker.sock", "/tmp/e/engine/docker.sock")

    def hint(*intents: MountIntent) -> bool:
        return may_name_socket(intents, sockets)

    for source in (
        "/var/run/docker.sock",
        "/var/run//docker.sock",
        "/var/run/./docker.sock",
        "/var/run",
        "/run/",
        "/",
        "/tmp/e",
        "/tmp/e/engine/docker.sock",
        "/home/u/agent.sock",
    ):
        assert hint(HostPath(source, "b")), source
    for source in ("/home/u/src", "/var/run/docker.socket", "/tmp/e/engine2", "/var/lib"):
        assert not hint(HostPath(source, "b")), source
    # named volumes and other containers' mounts are found out by asking the engine anyway
    assert not hint(NamedVolume("docker.sock", "v"), FromContainer("x", "f"))
    assert hint(NamedVolume("data", "v"), HostPath("/var/run", "b"))
    assert not hint()


def test_socket_aliases() -> None:
    table = parse_mountinfo(MOUNTINFO)
    assert socket_aliases("/run/docker.sock", (0, 30), table) == ("/srv/x/run/docker.sock",)
    assert socket_aliases("/home/u/p/s.sock", (254, 0), table) == ("/srv/with space/p/s.sock",)
    assert socket_aliases("/run/docker.sock", (9, 9), table) == ()


@pytest.mark.parametrize(
    ("path", "hit"),
    [
        (ResolvedPath("/proc", "/proc", is_dir=True), "/proc"),
        (ResolvedPath("/proc/self", "/proc/4242", is_dir=True), "/proc"),
        (ResolvedPath("/proc/cpuinfo", "/proc/cpuinfo"), None),
        (ResolvedPath("/var/lib/chroot", "/var/lib/chroot", is_dir=True), "/var/lib/chroot/proc"),
        (ResolvedPath("/var/lib", "/var/lib", is_dir=True), "/var/lib/chroot/proc"),
        (ResolvedPath("/home/u", "/home/u", is_dir=True), None),
        (ResolvedPath("/procfoo", "/procfoo", is_dir=True), None),
    ],
)
def test_reaches_procfs(path: ResolvedPath, hit: str | None) -> None:
    assert reaches_procfs(path, ("/proc", "/var/lib/chroot/proc")) == hit


def test_plugin_mounts_bound_by_option_are_host_paths() -> None:
    info = {
        "Config": {
            "Mounts": [
                {"Type": "none", "Source": "/etc", "Options": ["rbind"]},
                {"Type": "proc", "Source": "proc"},
            ]
        }
    }
    assert [m.source for m in plugin_mounts(info, "p")] == ["/etc"]
    bad = {"Settings": {"Mounts": [{"Type": "tmpfs", "Source": "etc", "Options": ["bind"]}]}}
    with pytest.raises(UnreadableMount):
        plugin_mounts(bad, "p")
