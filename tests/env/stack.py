"""A private dockerd + loopback registry + fixture images, all inside one temp dir.

Never talks to any other engine: the docker CLI always gets ``-H unix://<ours>``
and a scrubbed environment; dockerd gets its own data-root, exec-root, pidfile,
socket and config file.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from tests.env import _sys
from tests.env._sys import Response, http_request

STATE_FILE = "state.json"
STATE_VERSION = 1

# Variables that could point the CLI at another engine/config: never inherited.
SCRUBBED_ENV = (
    "DOCKER_HOST",
    "DOCKER_CONTEXT",
    "DOCKER_CONFIG",
    "DOCKER_TLS",
    "DOCKER_TLS_VERIFY",
    "DOCKER_CERT_PATH",
    "DOCKER_API_VERSION",
    "DOCKER_DEFAULT_PLATFORM",
)
_FORBIDDEN_OVERRIDES = ("DOCKER_HOST", "DOCKER_CONTEXT")

MANIFEST_ACCEPT = ", ".join(
    (
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    )
)

APT_PACKAGES = {"dockerd": "docker.io", "docker-registry": "docker-registry"}
_MAX_DIR_LEN = 60  # longest socket: <dir>/exec/containerd/containerd.sock.ttrpc < 108


class StackError(RuntimeError):
    """The stack could not be started (message includes the relevant log tail)."""


class DockerCommandError(subprocess.CalledProcessError):
    def __str__(self) -> str:
        return (
            f"{' '.join(map(str, self.cmd))} exited {self.returncode}\n"
            f"stdout: {self.stdout}\nstderr: {self.stderr}"
        )


# --------------------------------------------------------------------- packages


def missing_packages() -> list[str]:
    """Debian packages whose binaries are absent (docker.io, docker-registry, busybox-static)."""
    from tests.env.images import STATIC_BUSYBOX_CANDIDATES

    missing = []
    if not all(_sys.which(b) for b in ("dockerd", "containerd", "runc", "docker")):
        missing.append("docker.io")
    if not _sys.which("docker-registry"):
        missing.append("docker-registry")
    if not any(os.path.isfile(c) and _sys.is_static_elf(c) for c in STATIC_BUSYBOX_CANDIDATES):
        missing.append("busybox-static")
    return missing


_POLICY_RC_D = "/usr/sbin/policy-rc.d"
_POLICY_MARKER = "# eci-env: temporarily block service starts during apt-get install"


def ensure_packages() -> list[str]:
    """apt-get install whatever is missing; returns the packages installed.

    A temporary policy-rc.d keeps docker.io's postinst from starting the system
    docker.service (we never want that daemon or /var/run/docker.sock).
    """
    missing = missing_packages()
    if not missing:
        return []
    if os.geteuid() != 0:
        raise StackError(f"missing packages {missing} and not root: apt-get install them")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    placed_policy = False
    if not os.path.exists(_POLICY_RC_D):
        with open(_POLICY_RC_D, "w") as f:
            f.write(f"#!/bin/sh\n{_POLICY_MARKER}\nexit 101\n")
        os.chmod(_POLICY_RC_D, 0o755)
        placed_policy = True
    try:
        for cmd in (
            ["apt-get", "update", "-q"],
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
        ):
            proc = subprocess.run(
                cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True
            )
            if proc.returncode != 0:
                raise StackError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}{proc.stderr}")
    finally:
        if placed_policy:
            try:
                if _POLICY_MARKER in Path(_POLICY_RC_D).read_text():
                    os.unlink(_POLICY_RC_D)
            except OSError:
                pass
    still = missing_packages()
    if still:
        raise StackError(f"still missing after apt-get install: {still}")
    return missing


# ------------------------------------------------------------------- processes

_PR_SET_PDEATHSIG = 1


def _pdeathsig_preexec() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _spawn(argv: Sequence[str], log: Path, *, detached: bool, env: Mapping[str, str]) -> Any:
    """Start a daemon in its own session with output to `log`.

    Non-detached daemons also get PDEATHSIG=SIGTERM so they die with us even on
    SIGKILL (only when spawned from the main thread: the signal fires when the
    spawning *thread* exits).
    """
    preexec = None
    if not detached and threading.current_thread() is threading.main_thread():
        preexec = _pdeathsig_preexec
    with open(log, "ab") as out:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env=dict(env),
            preexec_fn=preexec,
        )


def _stop_pid(
    pid: int | None, popen: subprocess.Popen[bytes] | None, root: Path, timeout: float
) -> None:
    """SIGTERM, wait, SIGKILL – for our child (popen) or a pid that must mention root."""
    if popen is not None:
        if popen.poll() is None:
            popen.terminate()
            try:
                popen.wait(timeout)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait(10)
        return
    if pid and _sys.pid_alive(pid) and _sys.pid_matches(pid, root):
        _sys.terminate_pids([pid], timeout)


# -------------------------------------------------------------------- registry


@dataclass
class Registry:
    """A docker-registry (distribution 2.8) process on 127.0.0.1."""

    address: str  # "127.0.0.1:PORT"
    root: Path  # its dir: config.yml, storage/, registry.log [, htpasswd]
    pid: int
    users: dict[str, str] | None = None  # user -> password when basic auth is on
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def log(self) -> Path:
        return self.root / "registry.log"

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return _sys.pid_alive(self.pid) and _sys.pid_matches(self.pid, self.root)

    def request(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        body: bytes | None = None,
        timeout: float = 30.0,
    ) -> Response:
        """HTTP request to the registry; `auth` = (user, password) for basic auth."""
        hdrs = dict(headers or {})
        if auth is not None:
            import base64

            hdrs["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
        return http_request(
            method, path, host=self.address, headers=hdrs, body=body, timeout=timeout
        )

    def manifest_digest(self, repo: str, reference: str) -> str:
        """Docker-Content-Digest of HEAD /v2/<repo>/manifests/<reference>."""
        auth = next(iter(self.users.items())) if self.users else None
        r = self.request(
            "HEAD", f"/v2/{repo}/manifests/{reference}", {"Accept": MANIFEST_ACCEPT}, auth=auth
        )
        digest = r.header("Docker-Content-Digest")
        if r.status != 200 or not digest:
            raise StackError(f"HEAD manifest {repo}:{reference} -> {r.status} {r.headers}")
        return digest

    def stop(self, timeout: float = 10.0) -> None:
        _stop_pid(self.pid, self.popen, self.root, timeout)

    def to_state(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "root": str(self.root),
            "pid": self.pid,
            "users": self.users,
        }

    @classmethod
    def from_state(cls, d: Mapping[str, Any]) -> Registry:
        return cls(d["address"], Path(d["root"]), int(d["pid"]), d.get("users"))


def _bcrypt(password: str) -> str:
    """bcrypt hash for distribution's htpasswd auth, via libcrypt (libxcrypt) or htpasswd."""
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("crypt") or "libcrypt.so.1", use_errno=True)
        lib.crypt_gensalt.restype = ctypes.c_char_p
        lib.crypt_gensalt.argtypes = [
            ctypes.c_char_p,
            ctypes.c_ulong,
            ctypes.c_char_p,
            ctypes.c_int,
        ]
        lib.crypt.restype = ctypes.c_char_p
        lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        salt = lib.crypt_gensalt(b"$2b$", 5, None, 0)
        hashed = lib.crypt(password.encode(), salt) if salt else None
        if hashed and hashed.startswith(b"$2b$"):
            return str(hashed.decode())
    except (OSError, AttributeError):
        pass
    htpasswd = _sys.which("htpasswd")
    if not htpasswd:
        raise StackError("no bcrypt: need libcrypt with bcrypt support or apache2-utils")
    out = subprocess.run(
        [htpasswd, "-nbBC", "5", "u", password], capture_output=True, text=True, check=True
    ).stdout
    return out.strip().split(":", 1)[1]


# ------------------------------------------------------------------------ stack

_live_stacks: weakref.WeakSet[Stack] = weakref.WeakSet()
_handlers_installed = False


def _cleanup_live_stacks() -> None:
    for s in list(_live_stacks):
        try:
            s.stop()
        except Exception:  # best effort at exit
            pass


def _on_fatal_signal(signum: int, frame: FrameType | None) -> None:
    _cleanup_live_stacks()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_exit_handlers() -> None:
    global _handlers_installed
    if _handlers_installed:
        return
    _handlers_installed = True
    atexit.register(_cleanup_live_stacks)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) is signal.SIG_DFL:
                signal.signal(sig, _on_fatal_signal)


class Stack:
    """Private dockerd + loopback registry + pushed fixture images in one temp dir.

    Use as a context manager or call start()/stop(). With detached=True the
    daemons outlive this Python process (for ``python -m tests.env up``) and no
    exit handlers are registered; stop them with ``Stack.from_state(dir).stop()``.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        build_images: bool = True,
        install: bool = True,
        detached: bool = False,
        start_timeout: float = 60.0,
        docker_cli: str | None = None,
        dockerd_args: Sequence[str] = (),
    ) -> None:
        self.dockerd_args = tuple(dockerd_args)  # extra dockerd flags (e.g. --userns-remap)
        self._given_dir = Path(directory).absolute() if directory is not None else None
        self.build_images = build_images
        self.install = install
        self.detached = detached
        self.start_timeout = start_timeout
        self.docker_cli = docker_cli or os.environ.get("ECI_DOCKER_CLI") or _sys.which("docker")
        self.tmpdir: Path = self._given_dir or Path("/nonexistent")
        self.registry: str = ""
        self.registries: list[Registry] = []
        self.images: dict[str, str] = {}
        self.dockerd_pid: int | None = None
        self.containerd_pid: int | None = None
        self.timings: dict[str, float] = {}
        self._dockerd: subprocess.Popen[bytes] | None = None
        self._started = False
        self._stopped = False

    # ---------------------------------------------------------------- paths
    @property
    def engine_dir(self) -> Path:
        return self.tmpdir / "engine"

    @property
    def engine_socket(self) -> str:
        return str(self.engine_dir / "docker.sock")

    @property
    def engine_url(self) -> str:
        return "unix://" + self.engine_socket

    @property
    def data_root(self) -> Path:
        return self.tmpdir / "data"

    @property
    def exec_root(self) -> Path:
        return self.tmpdir / "exec"

    @property
    def dockerd_log(self) -> Path:
        return self.engine_dir / "dockerd.log"

    @property
    def docker_config_dir(self) -> Path:
        return self.tmpdir / "docker-config"

    @property
    def cgroup_parent(self) -> str:
        """Unique cgroup parent, so stop() can find (and reap) every container process."""
        return "eci-env-" + hashlib.sha256(str(self.tmpdir).encode()).hexdigest()[:12]

    @property
    def main_registry(self) -> Registry:
        return self.registries[0]

    def env_vars(self) -> dict[str, str]:
        """What scripts need to find this stack (printed by ``python -m tests.env up``)."""
        out = {
            "ECI_ENV_DIR": str(self.tmpdir),
            "ECI_ENGINE_SOCKET": self.engine_socket,
            "ECI_REGISTRY": self.registry,
        }
        for name, ref in self.images.items():
            out[f"ECI_IMAGE_{name.upper()}"] = ref
        return out

    # ------------------------------------------------------------ lifecycle
    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Stack:
        if self._started:
            raise StackError("stack already started")
        t0 = time.monotonic()
        if os.geteuid() != 0:
            raise StackError("the private dockerd needs root")
        if self.install:
            ensure_packages()
        if not self.docker_cli:
            self.docker_cli = _sys.which("docker")
        if not self.docker_cli:
            raise StackError("no docker CLI found")
        self._make_dir()
        self._started = True
        if not self.detached:
            _install_exit_handlers()
            _live_stacks.add(self)
        try:
            self.save_state()
            t = time.monotonic()
            self._start_dockerd()
            self.timings["dockerd"] = time.monotonic() - t
            t = time.monotonic()
            self.registries.append(self._spawn_registry("registry", None))
            self.registry = self.main_registry.address
            self.save_state()
            self.timings["registry"] = time.monotonic() - t
            if self.build_images:
                from tests.env.images import build_fixture_images

                t = time.monotonic()
                self.images = build_fixture_images(self)
                self.timings["images"] = time.monotonic() - t
                self.save_state()
        except BaseException:
            self.stop()
            raise
        self.timings["start"] = time.monotonic() - t0
        return self

    def _make_dir(self) -> None:
        if self._given_dir is None:
            self.tmpdir = Path(tempfile.mkdtemp(prefix="eci-env-", dir="/tmp"))
        else:
            d = self._given_dir
            if d.exists() and any(d.iterdir()):
                raise StackError(f"{d} exists and is not empty")
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.tmpdir = d
        if len(str(self.tmpdir)) > _MAX_DIR_LEN:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            raise StackError(f"{self.tmpdir}: path too long for unix sockets; use a dir under /tmp")
        self.engine_dir.mkdir()
        self.docker_config_dir.mkdir()
        (self.docker_config_dir / "config.json").write_text("{}\n")

    def _daemon_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
        env["DOCKER_CONFIG"] = str(self.docker_config_dir)
        env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        if "/usr/sbin" not in env["PATH"].split(":"):
            env["PATH"] += ":/usr/sbin:/sbin"
        return env

    def _start_dockerd(self) -> None:
        dockerd = _sys.which("dockerd")
        if not dockerd:
            raise StackError("dockerd not found")
        config = self.engine_dir / "daemon.json"
        # Only "deprecated-key-path" (no CLI flag in 20.10): otherwise dockerd writes
        # /etc/docker/key.json. Nothing else, and /etc/docker/daemon.json is never read.
        config.write_text(json.dumps({"deprecated-key-path": str(self.engine_dir / "key.json")}))
        argv = [
            dockerd,
            f"--config-file={config}",
            f"--data-root={self.data_root}",
            f"--exec-root={self.exec_root}",
            f"--host={self.engine_url}",
            f"--pidfile={self.engine_dir / 'dockerd.pid'}",
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
            f"--cgroup-parent=/{self.cgroup_parent}",
            "--shutdown-timeout=5",
            *self.dockerd_args,
        ]
        self._dockerd = _spawn(
            argv, self.dockerd_log, detached=self.detached, env=self._daemon_env()
        )
        self.dockerd_pid = self._dockerd.pid
        self.save_state()
        deadline = time.monotonic() + self.start_timeout
        while True:
            rc = self._dockerd.poll()
            if rc is not None:
                raise StackError(
                    f"dockerd exited with {rc} during start; tail of its log:\n"
                    + _sys.log_tail(self.dockerd_log)
                )
            try:
                r = self.engine_request("GET", "/_ping", timeout=2.0)
                if r.status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise StackError(
                    f"dockerd not answering /_ping after {self.start_timeout:.0f}s; "
                    "tail of its log:\n" + _sys.log_tail(self.dockerd_log)
                )
            time.sleep(0.05)
        pidfile = self.exec_root / "containerd" / "containerd.pid"
        try:
            self.containerd_pid = int(pidfile.read_text().strip())
        except (OSError, ValueError) as e:
            raise StackError(f"dockerd did not start its own containerd ({pidfile}: {e})") from e

    def _spawn_registry(self, name: str, users: Mapping[str, str] | None) -> Registry:
        exe = _sys.which("docker-registry")
        if not exe:
            raise StackError("docker-registry not found")
        root = self.tmpdir / "registries" / name
        if root.exists():
            raise StackError(f"registry {name} exists")
        (root / "storage").mkdir(parents=True)
        config: dict[str, Any] = {
            "version": "0.1",
            "log": {"level": "info", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(root / "storage")},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"secret": secrets.token_hex(16)},
        }
        if users is not None:
            htpasswd = root / "htpasswd"
            htpasswd.write_text("".join(f"{u}:{_bcrypt(p)}\n" for u, p in users.items()))
            config["auth"] = {"htpasswd": {"realm": "eci-env", "path": str(htpasswd)}}
        last_error = ""
        for _attempt in range(5):
            address = f"127.0.0.1:{_sys.free_tcp_port()}"
            config["http"]["addr"] = address
            # JSON is YAML: no yaml dependency needed.
            (root / "config.yml").write_text(json.dumps(config, indent=2))
            log = root / "registry.log"
            popen = _spawn(
                [exe, "serve", str(root / "config.yml")],
                log,
                detached=self.detached,
                env=self._daemon_env(),
            )
            reg = Registry(address, root, popen.pid, dict(users) if users else None, popen)
            self.registries.append(reg)  # so stop() finds it even if we fail below
            try:
                self._wait_registry(reg)
                self.registries.remove(reg)
                return reg
            except StackError as e:
                last_error = str(e)
                reg.stop()
                self.registries.remove(reg)
                if "address already in use" not in _sys.log_tail(log):
                    break
        raise StackError(last_error)

    def _wait_registry(self, reg: Registry, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if not reg.alive():
                raise StackError(
                    "registry exited during start; tail of its log:\n" + _sys.log_tail(reg.log)
                )
            try:
                r = reg.request("GET", "/v2/", timeout=2.0)
                if r.status == (401 if reg.users else 200):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise StackError(
                    f"registry not answering on {reg.address}:\n" + _sys.log_tail(reg.log)
                )
            time.sleep(0.05)

    def start_registry(self, auth_htpasswd: Mapping[str, str] | None = None) -> Registry:
        """Start an extra registry on a free loopback port.

        auth_htpasswd: {user: password} -> bcrypt htpasswd basic auth. Stopped by
        stop() (or earlier by Registry.stop()).
        """
        if not self._started or self._stopped:
            raise StackError("stack not running")
        reg = self._spawn_registry(
            f"extra{len(self.registries)}-{secrets.token_hex(3)}", auth_htpasswd
        )
        self.registries.append(reg)
        self.save_state()
        return reg

    def stop(self) -> None:
        """Stop everything this stack started and remove its dir. Idempotent."""
        if not self._started or self._stopped:
            return
        t0 = time.monotonic()
        root = self.tmpdir
        try:
            self._remove_containers()
            _stop_pid(self.dockerd_pid, self._dockerd, root, timeout=30.0)
            for reg in self.registries:
                reg.stop()
            # containerd, shims, anything else whose argv points into our dir.
            _sys.terminate_pids(_sys.pids_mentioning(root), timeout=5.0)
            _sys.remove_cgroup(self.cgroup_parent)
            _sys.unmount_all_under(root)
            shutil.rmtree(root, ignore_errors=True)
        finally:
            self._stopped = True
            _live_stacks.discard(self)
            self.timings["stop"] = time.monotonic() - t0

    def _dockerd_alive(self) -> bool:
        if self._dockerd is not None:
            return self._dockerd.poll() is None
        return bool(self.dockerd_pid and _sys.pid_alive(self.dockerd_pid))

    def _remove_containers(self) -> None:
        if not self._dockerd_alive():
            return
        try:
            r = self.engine_request("GET", "/containers/json?all=1", timeout=5.0)
            if r.status != 200:
                return
            data = r.json()
            assert isinstance(data, list)
            for c in data:
                self.engine_request("DELETE", f"/containers/{c['Id']}?force=1&v=1", timeout=30.0)
        except (OSError, ValueError):
            pass

    def leftovers(self) -> list[str]:
        """Everything of this stack still around (empty after a clean stop())."""
        out = []
        pids = {p for p in (self.dockerd_pid, self.containerd_pid) if p}
        pids |= {r.pid for r in self.registries}
        for p in sorted(pids):
            if _sys.pid_alive(p) and (_sys.pid_matches(p, self.tmpdir) or p == self.containerd_pid):
                out.append(f"process {p}: {_sys.proc_cmdline(p)}")
        for p in _sys.pids_mentioning(self.tmpdir):
            if p not in pids:
                out.append(f"process {p}: {_sys.proc_cmdline(p)}")
        out += [f"cgroup process {p}" for p in sorted(_sys.cgroup_pids(self.cgroup_parent))]
        out += [f"cgroup {d}" for d in _sys.cgroup_dirs(self.cgroup_parent)]
        out += [f"mount {m}" for m in _sys.mounts_under(self.tmpdir)]
        if self.tmpdir.exists():
            out.append(f"dir {self.tmpdir}")
        return out

    # --------------------------------------------------------------- state
    @property
    def state_file(self) -> Path:
        return self.tmpdir / STATE_FILE

    def save_state(self) -> None:
        state = {
            "version": STATE_VERSION,
            "dir": str(self.tmpdir),
            "engine_socket": self.engine_socket,
            "engine_url": self.engine_url,
            "registry": self.registry,
            "images": self.images,
            "dockerd_pid": self.dockerd_pid,
            "containerd_pid": self.containerd_pid,
            "cgroup_parent": self.cgroup_parent,
            "registries": [r.to_state() for r in self.registries],
            "docker_cli": self.docker_cli,
            "detached": self.detached,
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(self.state_file)

    @classmethod
    def from_state(cls, directory: str | os.PathLike[str]) -> Stack:
        """Re-attach to a stack (e.g. one started by ``up``) from DIR/state.json."""
        d = Path(directory).absolute()
        try:
            state = json.loads((d / STATE_FILE).read_text())
        except (OSError, ValueError) as e:
            raise StackError(f"no usable {d / STATE_FILE}: {e}") from e
        s = cls(d, build_images=False, install=False, detached=True, docker_cli=state["docker_cli"])
        s.tmpdir = Path(state["dir"])
        s.registry = state["registry"]
        s.images = dict(state["images"])
        s.dockerd_pid = state["dockerd_pid"]
        s.containerd_pid = state["containerd_pid"]
        s.registries = [Registry.from_state(r) for r in state["registries"]]
        s._started = True
        return s

    def status(self) -> dict[str, Any]:
        ping = False
        try:
            ping = self.engine_request("GET", "/_ping", timeout=2.0).status == 200
        except OSError:
            pass
        return {
            "dir": str(self.tmpdir),
            "dockerd": self._dockerd_alive(),
            "engine_ping": ping,
            "registries": {r.address: r.alive() for r in self.registries},
        }

    # ------------------------------------------------------------ clients
    def engine_request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 30.0,
    ) -> Response:
        """Raw HTTP request to the private engine's socket (path like "/info")."""
        hdrs = {"Content-Type": "application/json", **(headers or {})} if body else headers
        return http_request(
            method, path, unix_socket=self.engine_socket, body=body, headers=hdrs, timeout=timeout
        )

    def docker_env(self, env: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for docker CLI children: scrubbed, own DOCKER_CONFIG, DOCKER_BUILDKIT=0."""
        base = self._daemon_env()
        base["DOCKER_BUILDKIT"] = "0"
        for k in _FORBIDDEN_OVERRIDES:
            if env and k in env:
                raise ValueError(f"{k} may not be set: the stack always passes -H")
        base.update(env or {})
        return base

    def docker(
        self,
        *args: str,
        check: bool = True,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = 300.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the docker CLI against the private engine (-H always passed)."""
        if not self.docker_cli:
            raise StackError("no docker CLI")
        cmd = [self.docker_cli, "-H", self.engine_url, *args]
        proc = subprocess.run(
            cmd,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=self.docker_env(env),
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise DockerCommandError(proc.returncode, cmd, proc.stdout, proc.stderr)
        return proc

    def client(self) -> Any:
        """docker-py DockerClient for the private engine (never reads DOCKER_HOST)."""
        import docker

        return docker.DockerClient(base_url=self.engine_url, version="auto")

    def __repr__(self) -> str:
        return f"Stack({str(self.tmpdir)!r}, registry={self.registry!r})"
