"""`eci-agent login/logout/repull`, and the `run` flags that set up registry digests.

Credentials are kept through the `keyring` API; by default in the root-only file backend
(`agent.registry.keyring_backend`) under the state dir, since a root service has no desktop
keyring. `--keyring system` uses whatever keyring backend `keyring` picks instead.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import paths
from agent.registry.cache import CACHE_FILE
from agent.registry.client import Credentials, RegistryClient, RegistryError
from agent.registry.credentials import (
    CredentialsError,
    CredentialSource,
    CredentialStore,
    auth_key_domain,
    load_docker_config,
    remove_credentials,
    store_credentials,
    systemd_credentials_dir,
)
from agent.registry.digests import DigestService
from agent.registry.root_file import (
    DIR_NAME,
    FILE_NAME,
    CredentialsFileError,
    RootCredentialsFile,
)

if TYPE_CHECKING:
    import keyring.backend
from agent.registry.refresh import DEFAULT_INTERVAL, MAX_INTERVAL, MIN_INTERVAL, Schedule
from agent.settings.model import Effective

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def _interval(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not MIN_INTERVAL <= seconds <= MAX_INTERVAL:
        raise argparse.ArgumentTypeError(
            f"must be between {MIN_INTERVAL:.0f} and {MAX_INTERVAL:.0f} seconds"
        )
    return seconds


def _add_credential_arguments(parser: argparse.ArgumentParser, *, state_dir: bool) -> None:
    if state_dir:
        parser.add_argument("--state-dir", help="the agent's state dir (holds the credentials)")
    parser.add_argument(
        "--keyring",
        choices=("file", "system"),
        default="file",
        help="where logins are kept: the root-only file in the state dir (default), or the "
        "keyring backend the keyring library selects",
    )
    parser.add_argument(
        "--insecure-registry",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="speak plain HTTP to this registry (loopback registries always are)",
    )


def add_run_arguments(run: argparse.ArgumentParser) -> None:
    """The `run` flags for registry digests (the run parser already has --state-dir)."""
    run.add_argument(
        "--refresh-interval",
        type=_interval,
        default=DEFAULT_INTERVAL,
        metavar="SECONDS",
        help=f"how often the digests of allowed name:tag images are looked up again "
        f"(default {DEFAULT_INTERVAL:.0f}, {MIN_INTERVAL:.0f} to {MAX_INTERVAL:.0f})",
    )
    run.add_argument(
        "--registry-config",
        metavar="PATH",
        help="a docker config.json (root-owned, not group/world-writable) whose `auths` give "
        "registry credentials; credential helpers in it are never run",
    )
    _add_credential_arguments(run, state_dir=False)


def _state_dir(args: argparse.Namespace) -> Path:
    return Path(args.state_dir) if args.state_dir else paths.default_state_dir()


def keyring_backend(kind: str, state_dir: Path) -> keyring.backend.KeyringBackend:
    """The keyring backend `login`/`logout` write with (loads the keyring package)."""
    import keyring

    from agent.registry.keyring_backend import RootFileKeyring

    if kind == "system":
        return keyring.get_keyring()
    backend = RootFileKeyring(state_dir / DIR_NAME / FILE_NAME)
    keyring.set_keyring(backend)
    return backend


def credential_source(kind: str, state_dir: Path) -> CredentialSource:
    """What the agent reads credentials from: the root-only file directly (no keyring
    package in the agent's memory), or the system keyring when asked for."""
    if kind == "system":
        return keyring_backend(kind, state_dir)
    return RootCredentialsFile(state_dir / DIR_NAME / FILE_NAME)


def credential_store(args: argparse.Namespace, state_dir: Path) -> CredentialStore:
    """Raises CredentialsError when `--registry-config` names an unusable file."""
    import logging

    log = logging.getLogger("eci_agent.registry")
    docker_config: dict[str, Credentials] = {}
    config = getattr(args, "registry_config", None)
    if config:
        docker_config, warnings = load_docker_config(Path(config))
        for warning in warnings:
            log.warning("registry config: %s", warning)
        log.info(
            "registry config %s: credentials for %s",
            config,
            ", ".join(sorted(docker_config)) or "no registry",
        )
    return CredentialStore(
        credential_source(args.keyring, state_dir),
        systemd_dir=systemd_credentials_dir(),
        docker_config=docker_config,
    )


def build_digest_service(
    args: argparse.Namespace, state_dir: Path, current: Callable[[], Effective], engine: str
) -> DigestService:
    """The `run` command's DigestService (exits with a message on unusable credentials)."""
    from agent.proxy.engine_client import EngineClient

    try:
        store = credential_store(args, state_dir)
    except CredentialsError as err:
        raise SystemExit(f"eci-agent run: --registry-config: {err}") from None
    client = RegistryClient(store, insecure=frozenset(args.insecure_registry))
    return DigestService(
        client,
        cache_path=state_dir / CACHE_FILE,
        current=current,
        engine=EngineClient(engine),
        schedule=Schedule(interval=args.refresh_interval),
        close_engine=True,
    )


# -- login / logout ------------------------------------------------------------------------


def _keyring_error() -> type[Exception]:
    from keyring.errors import KeyringError

    return KeyringError


def cmd_login(args: argparse.Namespace) -> int:
    domain = auth_key_domain(args.registry)
    username = args.username
    if not username:
        if not sys.stdin.isatty() or args.password_stdin:
            print("eci-agent login: --username is required here", file=sys.stderr)
            return EXIT_USAGE
        username = input("Username: ").strip()
    if args.password_stdin:
        password = sys.stdin.read().rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ")
    if not username or not password:
        print("eci-agent login: empty username or password", file=sys.stderr)
        return EXIT_USAGE
    cred = Credentials(username, password)
    if not args.no_verify:
        client = RegistryClient({domain: cred}, insecure=frozenset(args.insecure_registry))
        try:
            client.check_login(domain)
        except RegistryError as err:
            print(f"eci-agent login: {domain}: {err}", file=sys.stderr)
            return EXIT_FAILED
    try:
        backend = keyring_backend(args.keyring, _state_dir(args))
        store_credentials(backend, domain, cred)
    except (_keyring_error(), OSError) as err:
        print(f"eci-agent login: cannot store the credentials: {err}", file=sys.stderr)
        return EXIT_FAILED
    print(f"Login for {domain} stored ({backend!r}); the agent uses it from its next lookup.")
    return EXIT_OK


def cmd_logout(args: argparse.Namespace) -> int:
    domain = auth_key_domain(args.registry)
    try:
        removed = remove_credentials(keyring_backend(args.keyring, _state_dir(args)), domain)
    except (_keyring_error(), OSError) as err:
        print(f"eci-agent logout: {err}", file=sys.stderr)
        return EXIT_FAILED
    if not removed:
        print(f"No stored login for {domain}.")
        return EXIT_OK
    print(f"Removed the stored login for {domain}.")
    return EXIT_OK


# -- repull --------------------------------------------------------------------------------


def _default_engine() -> str:
    host = os.environ.get("DOCKER_HOST", "")
    if host.startswith("unix://"):
        return host[len("unix://") :]
    return "/var/run/docker.sock"


def cmd_repull(args: argparse.Namespace) -> int:
    from agent.cli.main import engine_path
    from agent.registry.puller import RepullError, pull_fresh, repull_reference

    try:
        domain, _name, _tag = repull_reference(args.image)
    except RepullError as err:
        print(f"eci-agent repull: {err}", file=sys.stderr)
        return EXIT_USAGE
    engine = engine_path(args.engine or _default_engine())
    try:
        store = credential_store(args, _state_dir(args))
        cred = store.get(domain)
    except (CredentialsError, CredentialsFileError, OSError) as err:
        print(f"eci-agent repull: credentials: {err}", file=sys.stderr)
        return EXIT_FAILED
    try:
        outcome = pull_fresh(engine, args.image, cred, lambda line: print(line, flush=True))
    except RepullError as err:
        print(f"eci-agent repull: {err}", file=sys.stderr)
        return EXIT_FAILED
    print(outcome.summary())
    return EXIT_OK


def add_parsers(sub: Any) -> None:
    """Register `login`, `logout` and `repull` on the main parser's subcommands."""
    login = sub.add_parser("login", help="store credentials the agent uses for a registry")
    login.add_argument("registry", help="registry host[:port] (docker.io for Docker Hub)")
    login.add_argument("-u", "--username")
    login.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    login.add_argument(
        "--no-verify", action="store_true", help="store without checking them with the registry"
    )
    _add_credential_arguments(login, state_dir=True)
    login.set_defaults(func=cmd_login)

    logout = sub.add_parser("logout", help="remove the stored credentials for a registry")
    logout.add_argument("registry")
    _add_credential_arguments(logout, state_dir=True)
    logout.set_defaults(func=cmd_logout)

    repull = sub.add_parser(
        "repull",
        help="pull an allowed image again through the engine and remove its stale copy",
    )
    repull.add_argument("image", help="name:tag, as in the image list")
    repull.add_argument(
        "--engine", help="engine socket (default: $DOCKER_HOST or /var/run/docker.sock)"
    )
    repull.add_argument("--registry-config", metavar="PATH")
    _add_credential_arguments(repull, state_dir=True)
    repull.set_defaults(func=cmd_repull)
