"""`eci-agent check FILE`: exit codes and what it prints, on real files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.cli.main import EXIT_INVALID, EXIT_OK, EXIT_USAGE, main

SEED = {
    "configurationFileVersion": 2,
    "enhancedContainerIsolation": {
        "locked": True,
        "value": True,
        "dockerSocketMount": {
            "imageList": {
                "images": ["docker.io/localstack/localstack:*", "docker:cli"],
                "allowDerivedImages": True,
            },
            "commandList": {"type": "deny", "commands": ["push", "manifest"]},
        },
    },
    "proxy": {"locked": True, "mode": "system"},
}


def write(tmp_path: Path, content: str) -> str:
    path = tmp_path / "admin-settings.json"
    path.write_text(content)
    return str(path)


def test_valid_file_prints_the_normalized_policy(tmp_path, capsys) -> None:
    code = main(["check", write(tmp_path, json.dumps(SEED))])
    out = capsys.readouterr().out
    assert code == EXIT_OK
    assert "valid (sha256 " in out
    assert "docker.io/library/docker:cli" in out
    assert "docker.io/localstack/localstack:*" in out
    assert "ignored (Docker Desktop settings eci-agent does not enforce): proxy" in out
    assert "'manifest'" in out and "client-only" in out
    assert "command list (deny): push, manifest" in out
    assert "not enforced" not in out


def test_invalid_file_names_path_and_expectation(tmp_path, capsys) -> None:
    doc = json.loads(json.dumps(SEED))
    doc["enhancedContainerIsolation"]["dockerSocketMount"]["commandList"]["type"] = "block"
    code = main(["check", write(tmp_path, json.dumps(doc))])
    err = capsys.readouterr().err
    assert code == EXIT_INVALID
    assert (
        'enhancedContainerIsolation.dockerSocketMount.commandList.type: expected "allow" or '
        '"deny", got "block"'
    ) in err


def test_syntax_error_gives_line_and_column(tmp_path, capsys) -> None:
    code = main(["check", write(tmp_path, '{\n  "configurationFileVersion": 2,\n}\n')])
    err = capsys.readouterr().err
    assert code == EXIT_INVALID
    assert "line 2, column 32" in err and "trailing comma" in err


def test_json_output(tmp_path, capsys) -> None:
    assert main(["check", "--json", write(tmp_path, json.dumps(SEED))]) == EXIT_OK
    doc = json.loads(capsys.readouterr().out)
    assert doc["valid"] is True
    images = doc["enhancedContainerIsolation"]["dockerSocketMount"]["imageList"]["images"]
    assert images == ["docker.io/localstack/localstack:*", "docker.io/library/docker:cli"]
    assert main(["check", "--json", write(tmp_path, "\ufeff{}")]) == EXIT_INVALID
    bad = json.loads(capsys.readouterr().out)
    assert bad["valid"] is False and bad["problems"][0]["line"] == 1


def test_missing_file_is_a_usage_error(tmp_path, capsys) -> None:
    assert main(["check", str(tmp_path / "nope.json")]) == EXIT_USAGE
    assert "no such file" in capsys.readouterr().err


@pytest.mark.parametrize("mode", [0o666, 0o664])
def test_strict_modes_refuses_a_file_others_can_write(tmp_path, capsys, mode) -> None:
    folder = tmp_path / "etc"
    folder.mkdir(mode=0o755)
    tmp_path.chmod(0o755)
    path = folder / "admin-settings.json"
    path.write_text(json.dumps(SEED))
    path.chmod(mode)
    assert main(["check", str(path)]) == EXIT_OK
    capsys.readouterr()
    assert main(["check", "--strict-modes", str(path)]) == EXIT_INVALID
    assert "writable by" in capsys.readouterr().err


def test_per_image_command_lists_are_shown(tmp_path, capsys) -> None:
    doc = json.loads(json.dumps(SEED))
    doc["eciAgent"] = {
        "commandLists": [
            {"images": ["docker.io/testcontainers/ryuk:*"], "type": "allow", "commands": ["ps"]}
        ]
    }
    code = main(["check", write(tmp_path, json.dumps(doc))])
    out = capsys.readouterr().out
    assert code == EXIT_OK
    assert "command list for docker.io/testcontainers/ryuk:* (allow, eciAgent extension): ps" in out
    code = main(["check", "--json", write(tmp_path, json.dumps(doc))])
    summary = json.loads(capsys.readouterr().out)
    assert summary["eciAgent"]["commandLists"] == [
        {"images": ["docker.io/testcontainers/ryuk:*"], "type": "allow", "commands": ["ps"]}
    ]
