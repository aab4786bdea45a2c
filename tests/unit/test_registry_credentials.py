"""Registry credentials: the root-only keyring file, docker config.json, systemd credentials."""

from __future__ import annotations

import base64
import json
import logging
import os
from pathlib import Path

import pytest
from keyring.errors import PasswordDeleteError

from agent.cli.main import main
from agent.registry.client import Credentials
from agent.registry.credentials import (
    CredentialsError,
    CredentialStore,
    auth_key_domain,
    keyring_service,
    load_docker_config,
    parse_docker_config,
    remove_credentials,
    store_credentials,
    systemd_credential_name,
)
from agent.registry.keyring_backend import RootFileKeyring, UnsafeKeyringFile

SECRET = "hunter2-" + "z" * 10


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture
def backend(tmp_path: Path) -> RootFileKeyring:
    return RootFileKeyring(tmp_path / "state" / "credentials" / "registry-credentials.json")


def test_keyring_file_round_trip_is_root_only(backend: RootFileKeyring) -> None:
    assert backend.get_password("svc", "u") is None
    backend.set_password("svc", "u", SECRET)
    assert backend.get_password("svc", "u") == SECRET
    cred = backend.get_credential("svc", None)
    assert cred is not None and (cred.username, cred.password) == ("u", SECRET)
    assert backend.path.stat().st_mode & 0o777 == 0o600
    assert backend.path.parent.stat().st_mode & 0o777 == 0o700
    assert backend.path.stat().st_uid == os.geteuid()
    assert SECRET not in repr(backend)
    backend.delete_password("svc", "u")
    assert backend.get_password("svc", "u") is None
    with pytest.raises(PasswordDeleteError):
        backend.delete_password("svc", "u")


@pytest.mark.parametrize("target", ["file", "dir"])
def test_keyring_file_with_loose_modes_is_refused(backend: RootFileKeyring, target: str) -> None:
    backend.set_password("svc", "u", SECRET)
    os.chmod(
        backend.path if target == "file" else backend.path.parent,
        0o755 if target == "dir" else 0o644,
    )
    with pytest.raises(UnsafeKeyringFile, match="refused"):
        backend.get_password("svc", "u")


def test_keyring_file_owned_by_another_user_is_refused(backend: RootFileKeyring) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to chown")
    backend.set_password("svc", "u", SECRET)
    os.chown(backend.path, 65534, 65534)
    with pytest.raises(UnsafeKeyringFile, match="owned by uid 65534"):
        backend.get_password("svc", "u")


def test_keyring_file_symlink_is_refused(backend: RootFileKeyring, tmp_path: Path) -> None:
    backend.set_password("svc", "u", SECRET)
    real = tmp_path / "elsewhere.json"
    os.replace(backend.path, real)
    backend.path.symlink_to(real)
    with pytest.raises(UnsafeKeyringFile):
        backend.get_password("svc", "u")


def test_store_replaces_and_remove_forgets(backend: RootFileKeyring) -> None:
    store_credentials(backend, "index.docker.io", Credentials("alice", "a-" + SECRET))
    store_credentials(backend, "docker.io", Credentials("bob", SECRET))
    found = CredentialStore(backend).get("docker.io")
    assert found == Credentials("bob", SECRET)
    assert backend.get_password(keyring_service("docker.io"), "alice") is None
    assert remove_credentials(backend, "registry-1.docker.io")
    assert CredentialStore(backend).get("docker.io") is None
    assert not remove_credentials(backend, "docker.io")


@pytest.mark.parametrize(
    ("key", "domain"),
    [
        ("https://index.docker.io/v1/", "docker.io"),
        ("index.docker.io", "docker.io"),
        ("registry.example:5000", "registry.example:5000"),
        ("https://registry.example:5000/v2/", "registry.example:5000"),
        ("http://127.0.0.1:5000", "127.0.0.1:5000"),
    ],
)
def test_auth_keys(key: str, domain: str) -> None:
    assert auth_key_domain(key) == domain


def test_docker_config_auths_and_ignored_helpers() -> None:
    doc = {
        "auths": {
            "https://index.docker.io/v1/": {"auth": b64("hub:" + SECRET)},
            "registry.example:5000": {"auth": b64("u:pa:ss")},
            "plain.example": {"username": "p", "password": "q"},
            "bad.example": {"auth": "!!!"},
            "token.example": {"identitytoken": "xyz"},
            "empty.example": {},
        },
        "credsStore": "desktop",
        "credHelpers": {"gcr.io": "gcloud"},
    }
    creds, warnings = parse_docker_config(doc)
    assert creds == {
        "docker.io": Credentials("hub", SECRET),
        "registry.example:5000": Credentials("u", "pa:ss"),
        "plain.example": Credentials("p", "q"),
    }
    text = "\n".join(warnings)
    assert "credsStore 'desktop' ignored" in text and "credHelpers ignored for gcr.io" in text
    assert "bad.example" in text and "identity tokens" in text
    assert SECRET not in text
    with pytest.raises(CredentialsError):
        parse_docker_config([])


def test_docker_config_file_must_be_admin_only(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": {"r.example": {"auth": b64("u:" + SECRET)}}}))
    os.chmod(path, 0o600)
    creds, warnings = load_docker_config(path)
    assert creds == {"r.example": Credentials("u", SECRET)} and warnings == []
    os.chmod(path, 0o620)
    with pytest.raises(CredentialsError, match="writable by group or others"):
        load_docker_config(path)
    os.chmod(path, 0o644)
    assert "readable by group or others" in load_docker_config(path)[1][0]
    if os.geteuid() == 0:
        os.chown(path, 65534, 0)
        with pytest.raises(CredentialsError, match="owned by uid 65534"):
            load_docker_config(path)
    link = tmp_path / "link.json"
    link.symlink_to(path)
    with pytest.raises(CredentialsError):
        load_docker_config(link)
    path.write_text("{nope")
    os.chown(path, os.geteuid(), 0)
    os.chmod(path, 0o600)
    with pytest.raises(CredentialsError, match="not JSON"):
        load_docker_config(path)


def test_sources_in_order(tmp_path: Path, backend: RootFileKeyring) -> None:
    systemd = tmp_path / "creds"
    systemd.mkdir()
    (systemd / systemd_credential_name("r.example:5000")).write_text("sd:" + SECRET + "\n")
    assert systemd_credential_name("r.example:5000") == "eci-registry.r.example_5000"
    store_credentials(backend, "r.example:5000", Credentials("kr", "k"))
    store_credentials(backend, "k.example", Credentials("kr", "k"))
    config = {"r.example:5000": Credentials("dc", "d"), "d.example": Credentials("dc", "d")}
    store = CredentialStore(backend, systemd_dir=systemd, docker_config=config)
    assert store.get("r.example:5000") == Credentials("sd", SECRET)
    assert store.get("k.example") == Credentials("kr", "k")
    assert store.get("d.example") == Credentials("dc", "d")
    assert store.get("none.example") is None
    assert store.source_of("r.example:5000") == "systemd-credentials"
    assert store.source_of("k.example") == "keyring"
    assert store.source_of("d.example") == "docker-config"
    assert SECRET not in repr(store)


def test_an_unsafe_keyring_is_logged_not_used(
    backend: RootFileKeyring, caplog: pytest.LogCaptureFixture
) -> None:
    store_credentials(backend, "k.example", Credentials("u", SECRET))
    os.chmod(backend.path, 0o644)
    caplog.set_level(logging.DEBUG)
    assert CredentialStore(backend).get("k.example") is None
    assert "refused" in caplog.text and SECRET not in caplog.text


def test_login_and_logout_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    state = tmp_path / "state"
    monkeypatch.setattr("sys.stdin", io.StringIO(SECRET + "\n"))
    argv = ["login", "R.Example:5000", "-u", "u", "--password-stdin", "--no-verify"]
    assert main([*argv, "--state-dir", str(state)]) == 0
    out = capsys.readouterr()
    assert SECRET not in out.out + out.err
    backend = RootFileKeyring(state / "credentials" / "registry-credentials.json")
    assert CredentialStore(backend).get("r.example:5000") == Credentials("u", SECRET)
    assert main(["logout", "r.example:5000", "--state-dir", str(state)]) == 0
    assert "Removed" in capsys.readouterr().out
    assert CredentialStore(backend).get("r.example:5000") is None
    assert main(["logout", "r.example:5000", "--state-dir", str(state)]) == 0
    assert "No stored login" in capsys.readouterr().out
