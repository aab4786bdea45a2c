"""agent.policy.decide: which mounts reach the socket, and the verdict the user sees."""

from __future__ import annotations

import pytest

from agent.policy.decide import (
    ALLOW,
    PREFIX,
    ContainerFact,
    Decision,
    Exposure,
    HostFacts,
    MissingFact,
    Rewrite,
    VolumeFact,
    decide_created_image,
    decide_plugin,
    decide_socket_mount,
    decide_start,
    find_exposures,
    host_paths_needed,
)
from agent.policy.images import ImageVerdict
from agent.policy.mounts import (
    FromContainer,
    HostPath,
    MountIntent,
    NamedVolume,
    ProtectedSocket,
    ResolvedPath,
    UnreadableMount,
)

SOCK = "/var/run/docker.sock"
INODE = (2049, 131077)
ENGINE = ProtectedSocket(SOCK, "/run/docker.sock", INODE)
CONTAINER_SOCKET = "/run/eci-agent/container.sock"
WHERE = "the admin settings file /etc/eci-agent/admin-settings.json"
IMAGE = "docker.io/library/alpine"
IMAGE_ID = "sha256:aa11bb22cc33dd44ee55ff6600112233445566778899aabbccddeeff00112233"
B0 = "HostConfig.Binds[0]"
VF0 = "HostConfig.VolumesFrom[0]"

PATHS: dict[str, ResolvedPath] = {
    SOCK: ResolvedPath(SOCK, "/run/docker.sock", INODE, True),
    "//var/run/docker.sock": ResolvedPath("//var/run/docker.sock", "/run/docker.sock", INODE),
    "/var/run": ResolvedPath("/var/run", "/run"),
    "/": ResolvedPath("/", "/"),
    "/tmp/hardlink": ResolvedPath("/tmp/hardlink", "/tmp/hardlink", INODE),
    "/home/u/src": ResolvedPath("/home/u/src", "/home/u/src", (2049, 42)),
}
VOLUMES = {
    "sockvol": VolumeFact("sockvol", True, SOCK),
    "runvol": VolumeFact("runvol", True, "/var/run"),
    "data": VolumeFact("data", True),
    "fresh": VolumeFact("fresh", False),
    "unresolved": VolumeFact("unresolved", True, "/srv/not-resolved"),
}
CONTAINERS = {
    "socketeer": ContainerFact("socketeer", (HostPath(SOCK, "socketeer.Mounts[0]", False),)),
    "volumed": ContainerFact("volumed", (NamedVolume("sockvol", "volumed.Mounts[0]"),)),
    "harmless": ContainerFact("harmless", (HostPath("/home/u/src", "harmless.Mounts[0]", False),)),
    "gone": ContainerFact("gone", error="no such container"),
    "loop": ContainerFact("loop", (FromContainer("loop", "loop.VolumesFrom[0]"),)),
}
FACTS = HostFacts((ENGINE,), PATHS, VOLUMES, CONTAINERS)


def exposure(via: str, source: str = SOCK, exact: bool = True, rewritable: bool = True) -> Exposure:
    return Exposure(via, source, ENGINE, exact, rewritable)


# (case id, intents, the exposures find_exposures must report)
EXPOSURE_CASES: list[tuple[str, tuple[MountIntent, ...], tuple[Exposure, ...]]] = [
    ("nothing", (), ()),
    ("socket bind", (HostPath(SOCK, B0),), (exposure(B0),)),
    (
        "socket spelled //",
        (HostPath("//var/run/docker.sock", B0),),
        (exposure(B0, "//var/run/docker.sock"),),
    ),
    ("hard link", (HostPath("/tmp/hardlink", B0),), (exposure(B0, "/tmp/hardlink"),)),
    ("parent folder", (HostPath("/var/run", B0),), (exposure(B0, "/var/run", exact=False),)),
    ("root", (HostPath("/", B0),), (exposure(B0, "/", exact=False),)),
    ("unrelated bind", (HostPath("/home/u/src", B0),), ()),
    (
        "non-rewritable bind stays non-rewritable",
        (HostPath(SOCK, "Volumes['x']", rewritable=False),),
        (exposure("Volumes['x']", rewritable=False),),
    ),
    (
        "volume with the socket as device",
        (NamedVolume("sockvol", B0),),
        (exposure(B0, rewritable=False),),
    ),
    (
        "volume with a parent folder as device",
        (NamedVolume("runvol", B0),),
        (exposure(B0, "/var/run", exact=False, rewritable=False),),
    ),
    ("volume without device", (NamedVolume("data", B0),), ()),
    ("volume to be created", (NamedVolume("fresh", B0),), ()),
    (
        "VolumesFrom a socket-mounting container",
        (FromContainer("socketeer", VF0),),
        (exposure(VF0, rewritable=False),),
    ),
    (
        "VolumesFrom a container with a socket volume",
        (FromContainer("volumed", VF0),),
        (exposure(VF0, rewritable=False),),
    ),
    ("VolumesFrom a harmless container", (FromContainer("harmless", VF0),), ()),
    ("VolumesFrom itself does not loop", (FromContainer("loop", VF0),), ()),
    (
        "every exposure is reported",
        (
            HostPath("/home/u/src", B0),
            HostPath(SOCK, "HostConfig.Binds[1]"),
            NamedVolume("sockvol", "m"),
        ),
        (exposure("HostConfig.Binds[1]"), exposure("m", rewritable=False)),
    ),
]


@pytest.mark.parametrize(
    ("intents", "expected"), [pytest.param(i, e, id=n) for n, i, e in EXPOSURE_CASES]
)
def test_find_exposures(intents: tuple[MountIntent, ...], expected: tuple[Exposure, ...]) -> None:
    assert find_exposures(intents, FACTS) == expected


# (case id, intents, a word the MissingFact must contain)
MISSING_CASES: list[tuple[str, tuple[MountIntent, ...], str]] = [
    ("host path not resolved", (HostPath("/srv/elsewhere", B0),), "/srv/elsewhere"),
    ("volume not looked up", (NamedVolume("mystery", B0),), "mystery"),
    ("volume device not resolved", (NamedVolume("unresolved", B0),), "/srv/not-resolved"),
    ("container not looked up", (FromContainer("stranger", VF0),), "stranger"),
    ("container unreadable", (FromContainer("gone", VF0),), "no such container"),
    (
        "a later unknown still fails after an exposure",
        (HostPath(SOCK, B0), NamedVolume("mystery", "m")),
        "mystery",
    ),
]


@pytest.mark.parametrize(
    ("intents", "word"), [pytest.param(i, w, id=n) for n, i, w in MISSING_CASES]
)
def test_find_exposures_missing_facts(intents: tuple[MountIntent, ...], word: str) -> None:
    with pytest.raises(MissingFact) as err:
        find_exposures(intents, FACTS)
    assert word in str(err.value)


def test_no_protected_sockets_no_exposures() -> None:
    facts = HostFacts((), PATHS, VOLUMES, CONTAINERS)
    assert find_exposures((HostPath(SOCK, B0), HostPath("/", "x")), facts) == ()


@pytest.mark.parametrize(
    ("intents", "facts", "needed"),
    [
        ((HostPath(SOCK, B0), HostPath("/tmp", "x")), None, {SOCK, "/tmp"}),
        ((NamedVolume("sockvol", B0),), None, set()),  # volumes are looked up first
        ((NamedVolume("sockvol", B0), NamedVolume("data", "x")), FACTS, {SOCK}),
        ((NamedVolume("mystery", B0),), FACTS, set()),
        ((FromContainer("socketeer", VF0),), FACTS, {SOCK}),
        ((FromContainer("volumed", VF0),), FACTS, {SOCK}),
        ((FromContainer("stranger", VF0),), FACTS, set()),
    ],
)
def test_host_paths_needed(
    intents: tuple[MountIntent, ...], facts: HostFacts | None, needed: set[str]
) -> None:
    assert host_paths_needed(intents, facts) == needed


# --------------------------------------------------------------------------------------------
# decide_socket_mount
# --------------------------------------------------------------------------------------------

NOT_LISTED_MESSAGE = (
    "enhanced container isolation: docker socket mount denied for container with image "
    '"docker.io/library/alpine"; image is not in the allowed list; if you wish to allow it, '
    "configure the docker socket image list in " + WHERE
)

ALLOWED = ImageVerdict(True, f"repo digest {IMAGE_ID} is pinned", "alpine@sha256:...")
NOT_LISTED = ImageVerdict(False, "not listed")
NAMED = ImageVerdict(False, "named")
STALE = ImageVerdict(False, "stale", stale=("docker.io/library/alpine:3.20",))
UNKNOWN = ImageVerdict(
    False, "unverified", unknown=("docker.io/library/alpine:3.20: connection refused",)
)

EXACT = exposure(B0)
EXACT_2 = exposure("HostConfig.Mounts[0].Source", "//var/run/docker.sock")
FOLDER = exposure(B0, "/var/run", exact=False)
INDIRECT = exposure(VF0, rewritable=False)


def decide(
    exposures: tuple[Exposure, ...], verdict: ImageVerdict | None, image_id: str | None = IMAGE_ID
) -> Decision:
    return decide_socket_mount(
        exposures,
        IMAGE,
        verdict,
        image_id=image_id,
        container_socket=CONTAINER_SOCKET,
        settings_where=WHERE,
    )


# (case id, exposures, verdict, image id, status, rule, words the message must contain)
DENY_CASES: list[
    tuple[str, tuple[Exposure, ...], ImageVerdict | None, str | None, int, str, tuple[str, ...]]
] = [
    (
        "parent folder",
        (FOLDER,),
        ALLOWED,
        IMAGE_ID,
        403,
        "socket-mount-folder",
        ("/var/run", "mount the socket file itself", SOCK, B0),
    ),
    (
        "parent folder beside an exact mount",
        (EXACT, FOLDER),
        ALLOWED,
        IMAGE_ID,
        403,
        "socket-mount-folder",
        ("mount the socket file itself",),
    ),
    (
        "parent folder, image not even inspectable",
        (FOLDER,),
        None,
        None,
        403,
        "socket-mount-folder",
        ("mount the socket file itself",),
    ),
    (
        "image uninspectable",
        (EXACT,),
        None,
        None,
        403,
        "socket-mount-image-unknown",
        ("could not be inspected", "configure the docker socket image list in " + WHERE),
    ),
    (
        "verdict but no image id",
        (EXACT,),
        ALLOWED,
        None,
        403,
        "socket-mount-image-unknown",
        ("could not be inspected",),
    ),
    (
        "not listed",
        (EXACT,),
        NOT_LISTED,
        IMAGE_ID,
        403,
        "socket-mount-image",
        ("image is not in the allowed list",),
    ),
    (
        "stale",
        (EXACT,),
        STALE,
        IMAGE_ID,
        403,
        "socket-mount-image",
        (
            "no longer matches",
            "docker image rm docker.io/library/alpine:3.20",
            "docker pull docker.io/library/alpine:3.20",
        ),
    ),
    (
        "registry unreachable",
        (EXACT,),
        UNKNOWN,
        IMAGE_ID,
        403,
        "socket-mount-image",
        ("could not be verified against the registry", "connection refused"),
    ),
    (
        "allowed image, VolumesFrom",
        (INDIRECT,),
        ALLOWED,
        IMAGE_ID,
        403,
        "socket-mount-indirect",
        (VF0, "cannot rewrite", "bind-mount the socket file itself"),
    ),
    (
        "allowed image, one indirect among rewritable",
        (EXACT, INDIRECT),
        ALLOWED,
        IMAGE_ID,
        403,
        "socket-mount-indirect",
        (VF0,),
    ),
    (
        "not listed beats indirect",
        (INDIRECT,),
        NOT_LISTED,
        IMAGE_ID,
        403,
        "socket-mount-image",
        ("image is not in the allowed list",),
    ),
]


@pytest.mark.parametrize(
    ("exposures", "verdict", "image_id", "status", "rule", "words"),
    [pytest.param(*rest, id=n) for n, *rest in DENY_CASES],
)
def test_decide_denies(
    exposures: tuple[Exposure, ...],
    verdict: ImageVerdict | None,
    image_id: str | None,
    status: int,
    rule: str,
    words: tuple[str, ...],
) -> None:
    decision = decide(exposures, verdict, image_id)
    assert not decision.allowed
    assert decision.status == status
    assert decision.rule == rule
    assert decision.message.startswith(
        PREFIX + f'docker socket mount denied for container with image "{IMAGE}"; '
    )
    for word in words:
        assert word in decision.message
    assert decision.rewrites == ()
    assert decision.expect_image_id is None


def test_not_listed_uses_the_seed_wording_exactly() -> None:
    assert decide((EXACT,), NOT_LISTED).message == NOT_LISTED_MESSAGE
    assert decide((EXACT,), NAMED).message == NOT_LISTED_MESSAGE


def test_no_exposures_allows_whatever_the_image() -> None:
    assert decide((), None, None) == ALLOW
    assert decide((), NOT_LISTED) == ALLOW


@pytest.mark.parametrize(
    ("exposures", "rewrites"),
    [
        ((EXACT,), (Rewrite(B0, SOCK, CONTAINER_SOCKET),)),
        (
            (EXACT, EXACT_2),
            (
                Rewrite(B0, SOCK, CONTAINER_SOCKET),
                Rewrite("HostConfig.Mounts[0].Source", "//var/run/docker.sock", CONTAINER_SOCKET),
            ),
        ),
    ],
)
def test_allowed_rewrites_to_the_container_socket(
    exposures: tuple[Exposure, ...], rewrites: tuple[Rewrite, ...]
) -> None:
    decision = decide(exposures, ALLOWED)
    assert decision.allowed
    assert decision.status == 200
    assert decision.rule == "socket-mount-allowed"
    assert decision.rewrites == rewrites
    assert decision.expect_image_id == IMAGE_ID
    assert decision.details["entry"] == "alpine@sha256:..."
    assert decision.message == ""


# -- facts the mount table and link counts add ---------------------------------------------------


def test_a_folder_of_a_host_procfs_is_an_exposure() -> None:
    paths = {"/proc": ResolvedPath("/proc", "/proc", (4, 1), is_dir=True)}
    facts = HostFacts((ENGINE,), paths, procfs=("/proc",))
    (exp,) = find_exposures((HostPath("/proc", B0),), facts)
    assert not exp.exact and "/proc/<pid>/root" in exp.reason
    decision = decide((exp,), ALLOWED)
    assert decision.rule == "socket-mount-folder" and exp.reason in decision.message


def test_a_folder_on_a_hard_linked_sockets_filesystem_is_an_exposure() -> None:
    linked = ProtectedSocket(SOCK, "/run/docker.sock", INODE, links=3)
    paths = {"/srv/d": ResolvedPath("/srv/d", "/srv/d", (INODE[0], 9), is_dir=True)}
    (exp,) = find_exposures((HostPath("/srv/d", B0),), HostFacts((linked,), paths))
    assert not exp.exact and "3 hard links" in exp.reason


def test_an_unjudgeable_volume_is_refused_not_ignored() -> None:
    facts = HostFacts((ENGINE,), {}, {"p": VolumeFact("p", True, error="type 'proc'")})
    with pytest.raises(UnreadableMount, match="type 'proc'"):
        find_exposures((NamedVolume("p", B0),), facts)


# -- starting a container: its mounts are judged again ------------------------------------------

CT_SOCK = ProtectedSocket(CONTAINER_SOCKET, CONTAINER_SOCKET, (24, 7), "eci-agent container socket")
CT_EXPOSURE = Exposure("c.Mounts[0]", CONTAINER_SOCKET, CT_SOCK, True, False)


def start(exposures: tuple[Exposure, ...], verdict: ImageVerdict | None) -> Decision:
    return decide_start(
        exposures, IMAGE, verdict, container_socket=CONTAINER_SOCKET, settings_where=WHERE
    )


def test_start_without_exposures_is_allowed() -> None:
    assert start((), None) == ALLOW


def test_start_with_the_container_socket_needs_an_allowed_image() -> None:
    assert start((CT_EXPOSURE,), ALLOWED).allowed
    refused = start((CT_EXPOSURE,), NOT_LISTED)
    assert not refused.allowed and refused.message == NOT_LISTED_MESSAGE
    assert not start((CT_EXPOSURE,), None).allowed


@pytest.mark.parametrize(
    ("exposures", "rule", "word"),
    [
        ((EXACT,), "start-raw-socket", "never hands out"),
        ((CT_EXPOSURE, EXACT), "start-raw-socket", SOCK),
        ((FOLDER,), "socket-mount-folder", "/var/run"),
    ],
)
def test_start_never_hands_out_the_raw_socket(
    exposures: tuple[Exposure, ...], rule: str, word: str
) -> None:
    decision = start(exposures, ALLOWED)
    assert not decision.allowed and decision.status == 403
    assert decision.rule == rule and word in decision.message


def test_plugins_may_not_mount_the_socket() -> None:
    assert decide_plugin((), "p") == ALLOW
    decision = decide_plugin((FOLDER,), "evil:latest")
    assert not decision.allowed and decision.rule == "plugin-socket"
    assert '"evil:latest"' in decision.message and "/var/run" in decision.message


def test_a_source_is_judged_as_written_and_as_the_engine_cleans_it() -> None:
    raw, cleaned = "/home/u/link/../x", "/home/u/x"
    assert host_paths_needed((HostPath(raw, B0),)) == {raw, cleaned}
    paths = {
        raw: ResolvedPath(raw, "/run/x"),  # the link's target, then `..`
        cleaned: ResolvedPath(cleaned, "/run/docker.sock", INODE, True),  # x -> the socket
    }
    (exp,) = find_exposures((HostPath(raw, B0),), HostFacts((ENGINE,), paths))
    assert exp.exact and exp.source == raw


def test_container_peer_on_the_host_socket() -> None:
    from agent.policy.decide import decide_container_peer
    from agent.policy.images import ImageVerdict

    cid = "ab" * 32
    allowed = ImageVerdict(True, "pinned", "docker:cli")
    assert decide_container_peer(
        cid, "docker.io/library/docker", allowed, settings_where="f"
    ).allowed
    for verdict in (ImageVerdict(False, "not listed"), None):
        d = decide_container_peer(cid, "docker.io/library/alpine", verdict, settings_where="/etc/x")
        assert not d.allowed and d.status == 403
        assert d.message.startswith(
            "enhanced container isolation: docker socket mount denied for container with image "
            '"docker.io/library/alpine"; container abababababab reached'
        )
        assert d.message.endswith("configure the docker socket image list in /etc/x")


def test_decide_created_image() -> None:
    allowed = decide_created_image("alpine", ALLOWED, "/etc/x.json")
    assert allowed.allowed and allowed.rule == "socket-mount-allowed"
    refused = decide_created_image("alpine", NOT_LISTED, "/etc/x.json")
    assert not refused.allowed and refused.status == 403 and refused.rule == "socket-mount-image"
    assert (
        "image is not in the allowed list" in refused.message and "/etc/x.json" in refused.message
    )
    stale = decide_created_image(
        "alpine", ImageVerdict(False, "stale", stale=("docker.io/library/alpine:3",)), "/etc/x"
    )
    assert not stale.allowed and "no longer matches the registry's digest" in stale.message
    unknown = decide_created_image("alpine", None, "/etc/x.json")
    assert not unknown.allowed and unknown.rule == "socket-mount-image-unknown"
