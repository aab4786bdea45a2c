"""Offline fixture images built FROM scratch with the legacy builder.

* busybox:   /bin/busybox (static, from Debian's busybox-static) + applet symlinks.
* dockercli: busybox + a docker client at /usr/local/bin/docker. A static client is
             preferred; a dynamic one is copied together with its shared libraries
             and ELF interpreter, at the same paths as on the host.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from tests.env._sys import elf_interpreter, is_static_elf, which

if TYPE_CHECKING:
    from tests.env.stack import Stack

BUSYBOX_APPLETS = (
    "sh", "ls", "cat", "echo", "sleep", "id", "wget", "stat", "mkdir", "rm", "touch",
    "true", "false", "env", "readlink", "head", "wc", "dd", "sha256sum", "tail", "test",
    "grep",
    # handy extras; linked only if this busybox has them
    "[", "ash", "cp", "mv", "ln", "chmod", "chown", "printf", "sed", "tr", "cut", "sort",
    "uname", "whoami", "hostname", "kill", "ps", "find", "xargs", "seq", "date", "tee",
    "basename", "dirname", "pwd", "nc", "timeout", "mount", "df", "du", "ip", "awk",
    "base64", "md5sum", "uniq", "nproc", "usleep", "mktemp", "rmdir", "realpath", "which",
)  # fmt: skip
REQUIRED_APPLETS = BUSYBOX_APPLETS[: BUSYBOX_APPLETS.index("grep") + 1]

STATIC_BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
DOCKER_CLIENT_CANDIDATES = ("/usr/local/bin/docker", "/usr/bin/docker")

FIXTURE_REPOS = {"busybox": "fixtures/busybox", "dockercli": "fixtures/dockercli"}
FIXTURE_TAGS = ("1", "latest")

_PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
_GROUP = "root:x:0:\nnogroup:x:65534:\n"


class ImageBuildError(RuntimeError):
    pass


def find_static_busybox() -> Path:
    for c in STATIC_BUSYBOX_CANDIDATES:
        if os.path.isfile(c) and is_static_elf(c):
            return Path(c)
    raise ImageBuildError(
        f"no statically linked busybox in {STATIC_BUSYBOX_CANDIDATES} (install busybox-static)"
    )


def find_docker_client() -> Path:
    """The docker client to put into the dockercli image: static if any, else dynamic.

    $ECI_STATIC_DOCKER_CLI overrides the search.
    """
    override = os.environ.get("ECI_STATIC_DOCKER_CLI")
    if override:
        return Path(override)
    candidates = [*DOCKER_CLIENT_CANDIDATES]
    found = which("docker")
    if found:
        candidates.insert(0, found)
    existing = [Path(c) for c in dict.fromkeys(candidates) if os.path.isfile(c)]
    for c in existing:
        if is_static_elf(c):
            return c
    if existing:
        return existing[0]
    raise ImageBuildError("no docker client binary found (install docker.io)")


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def shared_libraries(binary: Path) -> list[str]:
    """Absolute paths of the libraries `ldd` lists for `binary`, plus its ELF interpreter."""
    interp = elf_interpreter(binary)
    if interp is None:
        return []
    out = subprocess.run(
        ["ldd", str(binary)],
        capture_output=True,
        text=True,
        check=True,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "LC_ALL": "C"},
    ).stdout
    paths = [interp]
    for line in out.splitlines():
        line = line.strip()
        target = line.split("=>", 1)[1].strip() if "=>" in line else line
        path = target.split(" (", 1)[0].strip()
        if path.startswith("/"):
            paths.append(path)
    return list(dict.fromkeys(paths))


def add_binary(rootfs: Path, binary: Path, dest: str) -> list[str]:
    """Put `binary` at `dest` inside rootfs; for a dynamic binary also its libraries.

    Libraries are stored (dereferenced) at the very paths ldd reports, so the
    ELF interpreter and the default search path find them. Returns those paths.
    """
    _link_or_copy(binary.resolve(), rootfs / dest.lstrip("/"))
    libs = shared_libraries(binary)
    for lib in libs:
        target = rootfs / lib.lstrip("/")
        if not target.exists():
            _link_or_copy(Path(lib).resolve(), target)
    return libs


def make_busybox_rootfs(rootfs: Path, busybox: Path | None = None) -> None:
    busybox = busybox or find_static_busybox()
    available = set(
        subprocess.run(
            [str(busybox), "--list"],
            capture_output=True,
            text=True,
            check=True,
            stdin=subprocess.DEVNULL,
        ).stdout.split()
    )
    missing = [a for a in REQUIRED_APPLETS if a not in available]
    if missing:
        raise ImageBuildError(f"{busybox} lacks applets: {missing}")
    bindir = rootfs / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    _link_or_copy(busybox, bindir / "busybox")
    for applet in BUSYBOX_APPLETS:
        if applet in available:
            (bindir / applet).symlink_to("busybox")
    (rootfs / "etc").mkdir(exist_ok=True)
    (rootfs / "etc/passwd").write_text(_PASSWD)
    (rootfs / "etc/group").write_text(_GROUP)
    (rootfs / "tmp").mkdir(exist_ok=True)
    (rootfs / "tmp").chmod(0o1777)
    (rootfs / "root").mkdir(mode=0o700, exist_ok=True)


def build_image(stack: Stack, context: Path, tags: list[str]) -> str:
    """Legacy-builder build of `context` on the stack's engine; returns the image id."""
    tag_args = [a for t in tags for a in ("-t", t)]
    proc = stack.docker(
        "build", "-q", "--network", "none", *tag_args, str(context),
        env={"DOCKER_BUILDKIT": "0"},
    )  # fmt: skip
    return proc.stdout.strip().splitlines()[-1]


def push(stack: Stack, refs: list[str]) -> None:
    for ref in refs:
        stack.docker("push", "-q", ref)


def build_busybox_image(stack: Stack, refs: list[str], busybox: Path | None = None) -> str:
    ctx = Path(stack.tmpdir) / "build" / "busybox"
    make_busybox_rootfs(ctx / "rootfs", busybox)
    (ctx / "Dockerfile").write_text('FROM scratch\nCOPY rootfs/ /\nCMD ["sh"]\n')
    return build_image(stack, ctx, refs)


def build_dockercli_image(
    stack: Stack, refs: list[str], base: str, client: Path | None = None, name: str = "dockercli"
) -> str:
    """Image FROM `base` (a busybox fixture) plus a docker client at /usr/local/bin/docker."""
    ctx = Path(stack.tmpdir) / "build" / name
    client = client or find_docker_client()
    add_binary(ctx / "rootfs", client, "/usr/local/bin/docker")
    (ctx / "Dockerfile").write_text(f'FROM {base}\nCOPY rootfs/ /\nCMD ["sh"]\n')
    image_id = build_image(stack, ctx, refs)
    check = stack.docker("run", "--rm", "--network", "none", refs[0], "docker", "--version")
    if not check.stdout.startswith("Docker version"):
        raise ImageBuildError(f"docker client does not run in {refs[0]}: {check!r}")
    return image_id


def build_fixture_images(stack: Stack) -> dict[str, str]:
    """Build + push all fixtures; returns name -> '<registry>/fixtures/<name>:1'."""
    images: dict[str, str] = {}
    for name, repo in FIXTURE_REPOS.items():
        refs = [f"{stack.registry}/{repo}:{tag}" for tag in FIXTURE_TAGS]
        if name == "busybox":
            build_busybox_image(stack, refs)
        else:
            build_dockercli_image(stack, refs, base=images["busybox"])
        push(stack, refs)
        images[name] = refs[0]
    for ref in images.values():
        digests = stack.docker("image", "inspect", "--format", "{{json .RepoDigests}}", ref)
        if stack.registry not in digests.stdout:
            raise ImageBuildError(f"{ref} has no RepoDigest after push: {digests.stdout}")
    shutil.rmtree(Path(stack.tmpdir) / "build", ignore_errors=True)
    return images
