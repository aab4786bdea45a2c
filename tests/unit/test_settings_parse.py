"""agent.settings.parse: admin-settings.json bytes -> AdminSettings, or every problem found.

The seed examples below are copied by hand from Docker's ECI documentation (the English page
"Advanced configuration options for ECI" and the Chinese page "配置 Docker 套接字异常和高级设置").
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from agent.settings.model import CommandListType, Severity
from agent.settings.parse import SettingsInvalid, SettingsProblem, parse_settings

ECI = "enhancedContainerIsolation"
SOCKET = f"{ECI}.dockerSocketMount"
IMAGES = f"{SOCKET}.imageList"
COMMANDS = f"{SOCKET}.commandList"

# -- the seed examples ----------------------------------------------------------------------

# English page: the full example file.
SEED_FULL_EN = """{
"configurationFileVersion": 2,
"enhancedContainerIsolation": {
"locked": true,
"value": true,
"dockerSocketMount": {
"imageList": {
"images": [
"docker.io/localstack/localstack:*",
"docker.io/testcontainers/ryuk:*",
"docker:cli"
],
"allowDerivedImages": true
},
"commandList": {
"type": "deny",
"commands": ["push"]
}
}
}
}"""

# Chinese page: the full example file (its command list also denies build).
SEED_FULL_ZH = """{
  "configurationFileVersion": 2,
  "enhancedContainerIsolation": {
    "locked": true,
    "value": true,
    "dockerSocketMount": {
      "imageList": {
        "images": [
          "docker.io/localstack/localstack:*",
          "docker.io/testcontainers/ryuk:*",
          "docker:cli"
        ],
        "allowDerivedImages": true
      },
      "commandList": {
        "type": "deny",
        "commands": ["push", "build"]
      }
    }
  }
}"""


def wrap_socket_member(snippet: str) -> str:
    """A `"imageList": {...}` or `"commandList": {...}` snippet, inside a whole file."""
    return (
        '{"configurationFileVersion": 2, "enhancedContainerIsolation": {"locked": true, '
        '"value": true, "dockerSocketMount": {' + snippet + "}}}"
    )


def wrap_eci_member(snippet: str) -> str:
    """A `"dockerSocketMount": {...}` snippet, inside a whole file."""
    return (
        '{"configurationFileVersion": 2, "enhancedContainerIsolation": {"locked": true, '
        '"value": true, ' + snippet + "}}"
    )


# (case id, whole file text, normalized images, allowDerivedImages, list type, commands)
SEED_CASES: list[tuple[str, str, list[str], bool, CommandListType, list[str]]] = [
    (
        "en full file",
        SEED_FULL_EN,
        [
            "docker.io/localstack/localstack:*",
            "docker.io/testcontainers/ryuk:*",
            "docker.io/library/docker:cli",
        ],
        True,
        CommandListType.DENY,
        ["push"],
    ),
    (
        "zh full file",
        SEED_FULL_ZH,
        [
            "docker.io/localstack/localstack:*",
            "docker.io/testcontainers/ryuk:*",
            "docker.io/library/docker:cli",
        ],
        True,
        CommandListType.DENY,
        ["push", "build"],
    ),
    (
        "en image list",
        wrap_socket_member("""
"imageList": {
"images": [
"docker.io/localstack/localstack:*",
"docker.io/testcontainers/ryuk:*",
"docker:cli"
]
}"""),
        [
            "docker.io/localstack/localstack:*",
            "docker.io/testcontainers/ryuk:*",
            "docker.io/library/docker:cli",
        ],
        False,
        CommandListType.DENY,
        [],
    ),
    (
        "en paketo derived images",
        wrap_socket_member("""
"imageList": {
"images": [
"paketobuildpacks/builder:base"
],
"allowDerivedImages": true
}"""),
        ["docker.io/paketobuildpacks/builder:base"],
        True,
        CommandListType.DENY,
        [],
    ),
    (
        "en allow every image",
        wrap_socket_member("""
"imageList": {
"images": [
"*"
]
}"""),
        ["*"],
        False,
        CommandListType.DENY,
        [],
    ),
    (
        "en deny build and push",
        wrap_socket_member("""
"commandList": {
"type": "deny",
"commands": ["build", "push"]
}"""),
        [],
        False,
        CommandListType.DENY,
        ["build", "push"],
    ),
    (
        "zh basic allow list",
        wrap_socket_member("""
"imageList": {
  "images": [
    "docker.io/testcontainers/ryuk:*",
    "docker:cli",
    "alpine:latest"
  ]
}"""),
        [
            "docker.io/testcontainers/ryuk:*",
            "docker.io/library/docker:cli",
            "docker.io/library/alpine:latest",
        ],
        False,
        CommandListType.DENY,
        [],
    ),
    (
        "zh wildcard allow list",
        wrap_socket_member("""
"imageList": {
  "images": ["*"]
}"""),
        ["*"],
        False,
        CommandListType.DENY,
        [],
    ),
    (
        "zh derived images",
        wrap_socket_member("""
"imageList": {
  "images": [
    "paketobuildpacks/builder:base"
  ],
  "allowDerivedImages": true
}"""),
        ["docker.io/paketobuildpacks/builder:base"],
        True,
        CommandListType.DENY,
        [],
    ),
    (
        "zh deny list",
        wrap_socket_member("""
"commandList": {
  "type": "deny",
  "commands": ["push", "build", "image*"]
}"""),
        [],
        False,
        CommandListType.DENY,
        ["push", "build", "image*"],
    ),
    (
        "zh allow list",
        wrap_socket_member("""
"commandList": {
  "type": "allow",
  "commands": ["ps", "container*", "volume*"]
}"""),
        [],
        False,
        CommandListType.ALLOW,
        ["ps", "container*", "volume*"],
    ),
    (
        "zh testcontainers",
        wrap_eci_member("""
"dockerSocketMount": {
  "imageList": {
    "images": [
      "docker.io/testcontainers/ryuk:*",
      "testcontainers/*:*"
    ]
  },
  "commandList": {
    "type": "deny",
    "commands": ["push", "build"]
  }
}"""),
        ["docker.io/testcontainers/ryuk:*", "docker.io/testcontainers/*:*"],
        False,
        CommandListType.DENY,
        ["push", "build"],
    ),
    (
        "zh ci/cd tools",
        wrap_eci_member("""
"dockerSocketMount": {
  "imageList": {
    "images": [
      "docker:cli",
      "your-registry.com/ci-tools/*:*"
    ]
  },
  "commandList": {
    "type": "allow",
    "commands": ["ps", "container*", "image*"]
  }
}"""),
        ["docker.io/library/docker:cli", "your-registry.com/ci-tools/*:*"],
        False,
        CommandListType.ALLOW,
        ["ps", "container*", "image*"],
    ),
    (
        "zh docker-in-docker",
        wrap_eci_member("""
"dockerSocketMount": {
  "imageList": {
    "images": [
      "docker:dind",
      "docker:cli"
    ]
  },
  "commandList": {
    "type": "deny",
    "commands": ["system*"]
  }
}"""),
        ["docker.io/library/docker:dind", "docker.io/library/docker:cli"],
        False,
        CommandListType.DENY,
        ["system*"],
    ),
]


@pytest.mark.parametrize(
    ("text", "images", "derived", "list_type", "commands"),
    [c[1:] for c in SEED_CASES],
    ids=[c[0] for c in SEED_CASES],
)
def test_seed_examples_parse(
    text: str, images: list[str], derived: bool, list_type: CommandListType, commands: list[str]
) -> None:
    data = text.encode()
    settings = parse_settings(data, "/etc/eci-agent/admin-settings.json")
    eci = settings.eci
    assert (eci.value, eci.locked) == (True, True)
    assert settings.configuration_file_version == 2
    socket = eci.socket_mount
    assert [p.normalized() for p in socket.image_list.images] == images
    assert socket.image_list.allow_derived_images is derived
    assert socket.image_list.allows_everything is (images == ["*"])
    assert socket.command_list.type is list_type
    assert [c.text for c in socket.command_list.commands] == commands
    assert settings.source == "/etc/eci-agent/admin-settings.json"
    assert settings.sha256 == hashlib.sha256(data).hexdigest()
    assert settings.ignored_keys == ()
    assert not settings.is_builtin_default


def test_seed_full_file_details() -> None:
    settings = parse_settings(SEED_FULL_ZH.encode())
    commands = settings.eci.socket_mount.command_list.commands
    assert commands[0].commands == frozenset({"image push"})
    assert "image build" in commands[1].commands
    assert settings.notes == ()  # nothing to say about Docker's own example


def test_testcontainers_path_wildcard_gets_a_notice() -> None:
    settings = parse_settings(SEED_CASES[11][1].encode())
    notes = [n for n in settings.notes if n.json_path == f"{IMAGES}.images[1]"]
    assert len(notes) == 1
    assert notes[0].severity is Severity.NOTICE
    assert "'testcontainers/*:*'" in notes[0].message


# -- problems --------------------------------------------------------------------------------


def doc(**eci_fields: Any) -> str:
    """A whole file whose enhancedContainerIsolation has `eci_fields` (JSON-encoded)."""
    eci: dict[str, Any] = {"value": True, "locked": True}
    eci.update(eci_fields)
    return json.dumps({"configurationFileVersion": 2, ECI: eci})


def socket_doc(image_list: Any = None, command_list: Any = None) -> str:
    mount: dict[str, Any] = {}
    if image_list is not None:
        mount["imageList"] = image_list
    if command_list is not None:
        mount["commandList"] = command_list
    return doc(dockerSocketMount=mount)


# (case id, file text, [(json path, message)]) -- messages compared exactly.
PROBLEM_CASES: list[tuple[str, str, list[tuple[str, str]]]] = [
    (
        "command list type block",
        socket_doc(command_list={"type": "block", "commands": []}),
        [(f"{COMMANDS}.type", 'expected "allow" or "deny", got "block"')],
    ),
    (
        "command list type capitalized",
        socket_doc(command_list={"type": "Deny"}),
        [(f"{COMMANDS}.type", 'expected "allow" or "deny", got "Deny"')],
    ),
    (
        "command list type number",
        socket_doc(command_list={"type": 1}),
        [(f"{COMMANDS}.type", 'expected "allow" or "deny", got 1')],
    ),
    (
        "command list type array",
        socket_doc(command_list={"type": ["deny"]}),
        [(f"{COMMANDS}.type", 'expected "allow" or "deny", got an array')],
    ),
    ("not an object", "[]", [("", "expected a JSON object, got an array")]),
    ("a string", '"settings"', [("", 'expected a JSON object, got "settings"')]),
    ("null", "null", [("", "expected a JSON object, got null")]),
    (
        "eci an array",
        json.dumps({"configurationFileVersion": 2, ECI: []}),
        [(ECI, "expected an object, got an array")],
    ),
    (
        "eci true",
        json.dumps({"configurationFileVersion": 2, ECI: True}),
        [(ECI, "expected an object, got true")],
    ),
    ("value a string", doc(value="true"), [(f"{ECI}.value", 'expected true or false, got "true"')]),
    ("value a number", doc(value=1), [(f"{ECI}.value", "expected true or false, got 1")]),
    (
        "locked a string",
        doc(locked="yes"),
        [(f"{ECI}.locked", 'expected true or false, got "yes"')],
    ),
    (
        "locked an object",
        doc(locked={}),
        [(f"{ECI}.locked", "expected true or false, got an object")],
    ),
    (
        "value missing",
        json.dumps({"configurationFileVersion": 2, ECI: {"locked": True}}),
        [(f"{ECI}.value", "expected true or false, but it is missing")],
    ),
    (
        "value null",
        doc(value=None),
        [(f"{ECI}.value", "expected true or false, but it is missing")],
    ),
    (
        "socket mount a bool",
        doc(dockerSocketMount=True),
        [(SOCKET, "expected an object, got true")],
    ),
    (
        "image list an array",
        socket_doc(image_list=["docker:cli"]),
        [(f"{SOCKET}.imageList", "expected an object, got an array")],
    ),
    (
        "images a string",
        socket_doc(image_list={"images": "docker:cli"}),
        [(f"{IMAGES}.images", 'expected an array of strings, got "docker:cli"')],
    ),
    (
        "images an object",
        socket_doc(image_list={"images": {"a": 1}}),
        [(f"{IMAGES}.images", "expected an array of strings, got an object")],
    ),
    (
        "image a number",
        socket_doc(image_list={"images": ["docker:cli", 7]}),
        [(f"{IMAGES}.images[1]", "expected a string, got 7")],
    ),
    (
        "image null",
        socket_doc(image_list={"images": [None]}),
        [(f"{IMAGES}.images[0]", "expected a string, got null")],
    ),
    (
        "allowDerivedImages a string",
        socket_doc(image_list={"allowDerivedImages": "true"}),
        [(f"{IMAGES}.allowDerivedImages", 'expected true or false, got "true"')],
    ),
    (
        "command list a string",
        socket_doc(command_list="deny"),
        [(f"{SOCKET}.commandList", 'expected an object, got "deny"')],
    ),
    (
        "commands a string",
        socket_doc(command_list={"commands": "push"}),
        [(f"{COMMANDS}.commands", 'expected an array of strings, got "push"')],
    ),
    (
        "command a bool",
        socket_doc(command_list={"commands": ["push", False]}),
        [(f"{COMMANDS}.commands[1]", "expected a string, got false")],
    ),
    (
        "version 1",
        json.dumps({"configurationFileVersion": 1, ECI: {"value": True}}),
        [
            (
                "configurationFileVersion",
                "expected 2, got 1 (version 1 is the retired Docker Desktop Enterprise format)",
            )
        ],
    ),
    (
        "version 3",
        json.dumps({"configurationFileVersion": 3, ECI: {"value": True}}),
        [("configurationFileVersion", "expected 2, got 3")],
    ),
    (
        "version a string",
        json.dumps({"configurationFileVersion": "2", ECI: {"value": True}}),
        [("configurationFileVersion", 'expected 2, got "2"')],
    ),
    (
        "version a float",
        '{"configurationFileVersion": 2.0, "enhancedContainerIsolation": {"value": true}}',
        [("configurationFileVersion", "expected 2, got 2.0")],
    ),
    (
        "version a bool",
        json.dumps({"configurationFileVersion": True, ECI: {"value": True}}),
        [("configurationFileVersion", "expected 2, got true")],
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"), [c[1:] for c in PROBLEM_CASES], ids=[c[0] for c in PROBLEM_CASES]
)
def test_problems_name_their_json_path(text: str, expected: list[tuple[str, str]]) -> None:
    with pytest.raises(SettingsInvalid) as info:
        parse_settings(text.encode(), "/etc/eci-agent/admin-settings.json")
    problems = info.value.problems
    assert [(p.json_path, p.message) for p in problems] == expected
    assert all(p.line is None for p in problems)
    message = str(info.value)
    assert message.startswith("/etc/eci-agent/admin-settings.json: invalid admin settings")
    for path, text_ in expected:
        assert f"{path or '(file)'}: {text_}" in message


def test_problem_str_shape() -> None:
    with pytest.raises(SettingsInvalid) as info:
        parse_settings(socket_doc(command_list={"type": "block"}).encode())
    assert [str(p) for p in info.value.problems] == [
        "enhancedContainerIsolation.dockerSocketMount.commandList.type: "
        'expected "allow" or "deny", got "block"'
    ]


# (case id, bytes, message prefix, line, column)
SYNTAX_CASES: list[tuple[str, bytes, str, int, int]] = [
    (
        "BOM",
        b'\xef\xbb\xbf{"configurationFileVersion": 2}',
        "a UTF-8 byte order mark (BOM) is not allowed before the JSON",
        1,
        1,
    ),
    (
        "BOM before the seed file",
        b"\xef\xbb\xbf" + SEED_FULL_ZH.encode(),
        "a UTF-8 byte order mark (BOM) is not allowed before the JSON",
        1,
        1,
    ),
    (
        "trailing comma after a member",
        b'{\n  "configurationFileVersion": 2,\n}',
        "trailing comma before the closing bracket (JSON allows none)",
        2,
        32,
    ),
    (
        "trailing comma in the image list",
        b'{\n  "enhancedContainerIsolation": {\n    "value": true,\n'
        b'    "dockerSocketMount": {"imageList": {"images": ["docker:cli",]}}\n  }\n}',
        "trailing comma before the closing bracket (JSON allows none)",
        4,
        64,
    ),
    (
        "trailing comma in the seed file",
        SEED_FULL_ZH.replace('"build"]', '"build",]').encode(),
        "trailing comma before the closing bracket (JSON allows none)",
        17,
        37,
    ),
    ("missing comma", b'{\n"value": true\n"locked": true}', "expecting ',' delimiter", 3, 1),
    ("missing colon", b'{"configurationFileVersion" 2}', "expecting ':' delimiter", 1, 29),
    (
        "unquoted key",
        b"{configurationFileVersion: 2}",
        "expecting property name enclosed in double quotes",
        1,
        2,
    ),
    ("truncated file", SEED_FULL_ZH[:-2].encode(), "expecting ',' delimiter", 20, 4),
    ("truncated string", SEED_FULL_ZH[:200].encode(), "unterminated string starting at", 9, 11),
    ("empty file", b"", "expecting value", 1, 1),
    ("only white space", b"  \n ", "expecting value", 2, 2),
    ("two documents", b"{}\n{}", "unexpected text after the JSON value", 2, 1),
    ("true spelled True", b'{"a": True}', "expecting value", 1, 7),
    ("NaN", b'{"configurationFileVersion": NaN}', "NaN is not valid JSON", 1, 1),
    ("invalid UTF-8", b'{\n"proxy": "\xfe"}', "the text is not valid UTF-8", 2, 11),
]


@pytest.mark.parametrize(
    ("data", "message", "line", "column"),
    [c[1:] for c in SYNTAX_CASES],
    ids=[c[0] for c in SYNTAX_CASES],
)
def test_syntax_errors_name_line_and_column(
    data: bytes, message: str, line: int, column: int
) -> None:
    with pytest.raises(SettingsInvalid) as info:
        parse_settings(data)
    (problem,) = info.value.problems
    assert problem.json_path == ""
    assert problem.message.startswith(message)
    assert (problem.line, problem.column) == (line, column)
    assert str(problem).startswith(f"(file) (line {line}, column {column}): {message}")


# (case id, image entry, fragment of the reason)
BAD_IMAGES: list[tuple[str, str, str]] = [
    ("upper case", "Docker:cli", "repository name must be lowercase"),
    ("upper case path", "docker.io/TestContainers/ryuk:*", "repository name must be lowercase"),
    ("short sha256", "name@sha256:abc", "malformed digest 'sha256:abc'"),
    ("63-digit sha256", "name@sha256:" + "a" * 63, "64 lower-case hex digits"),
    ("upper-case sha256", "name@sha256:" + "A" * 64, "64 lower-case hex digits"),
    ("empty string", "", "empty reference"),
    ("spaces", "docker: cli", "malformed tag"),
    ("leading space", " docker:cli", "leading or trailing white space"),
    ("a URL", "http://x/y", "a reference has no scheme"),
    ("partial wildcard", "docker:c*", "malformed tag"),
    ("double star", "**", "malformed repository path component"),
]


@pytest.mark.parametrize(
    ("image", "why"), [c[1:] for c in BAD_IMAGES], ids=[c[0] for c in BAD_IMAGES]
)
def test_malformed_image_references(image: str, why: str) -> None:
    text = socket_doc(image_list={"images": ["docker:cli", image]})
    with pytest.raises(SettingsInvalid) as info:
        parse_settings(text.encode())
    (problem,) = info.value.problems
    assert problem.json_path == f"{IMAGES}.images[1]"
    assert problem.message.startswith(
        f"expected an image reference, invalid image reference {image!r}: "
    )
    assert why in problem.message


# (entry, a suggestion that must be offered)
UNKNOWN_COMMANDS: list[tuple[str, str | None]] = [
    ("pus", "push"),
    ("containr*", "container*"),
    ("biuld", "build"),
    ("volume lst", "volume ls"),
    ("frobnicate", None),
]


@pytest.mark.parametrize(
    ("entry", "suggestion"), UNKNOWN_COMMANDS, ids=[c[0] for c in UNKNOWN_COMMANDS]
)
def test_unknown_commands_are_problems_with_suggestions(entry: str, suggestion: str | None) -> None:
    text = socket_doc(command_list={"type": "deny", "commands": ["push", entry]})
    with pytest.raises(SettingsInvalid) as info:
        parse_settings(text.encode())
    (problem,) = info.value.problems
    assert problem.json_path == f"{COMMANDS}.commands[1]"
    assert problem.message.startswith(f"unknown docker command {entry!r}")
    if suggestion is None:
        assert "did you mean" not in problem.message
    else:
        offered = problem.message.split("(did you mean ", 1)[1].split("?)", 1)[0]
        assert repr(suggestion) in offered.split(", ")


UNSUPPORTED = [
    "compose",
    "dev",
    "extension",
    "feedback",
    "init",
    "manifest",
    "plugin",
    "sbom",
    "scout",
    "trust",
]


@pytest.mark.parametrize("command", UNSUPPORTED)
def test_commands_docker_desktop_does_not_support_get_a_note(command: str) -> None:
    text = socket_doc(command_list={"type": "deny", "commands": ["push", command]})
    settings = parse_settings(text.encode())
    assert [c.text for c in settings.eci.socket_mount.command_list.commands] == ["push", command]
    notes = [n for n in settings.notes if n.json_path == f"{COMMANDS}.commands[1]"]
    assert len(notes) == 1
    assert notes[0].message.startswith(
        f"Docker Desktop does not support {command!r} in the command list; here: "
    )
    assert notes[0].severity is Severity.WARNING
    assert not [n for n in settings.notes if n.json_path == f"{COMMANDS}.commands[0]"]


def notes_by_path(text: str) -> dict[str, list[str]]:
    settings = parse_settings(text.encode())
    out: dict[str, list[str]] = {}
    for note in settings.notes:
        out.setdefault(note.json_path, []).append(note.message)
    return out


# (case id, text, json path of the note, fragment of its message)
NOTE_CASES: list[tuple[str, str, str, str]] = [
    (
        "unknown top-level key",
        json.dumps(
            {"configurationFileVersion": 2, ECI: {"value": True, "locked": True}, "frobnicate": 1}
        ),
        "frobnicate",
        "not a Docker Desktop setting we know; ignored",
    ),
    (
        "misspelt eci key",
        json.dumps({"configurationFileVersion": 2, "enhancedContainerIsolaton": {"value": True}}),
        "enhancedContainerIsolaton",
        "did you mean 'enhancedContainerIsolation'?",
    ),
    (
        "eci not set",
        json.dumps({"configurationFileVersion": 2}),
        ECI,
        "not set: the built-in default applies",
    ),
    (
        "misspelt locked",
        doc(lockd=True),
        f"{ECI}.lockd",
        "unknown key, ignored (Docker Desktop ignores it too); did you mean 'locked'?",
    ),
    (
        "unknown socket key",
        doc(dockerSocketMount={"imageLists": {}}),
        f"{SOCKET}.imageLists",
        "did you mean 'imageList'?",
    ),
    (
        "unknown image list key",
        socket_doc(image_list={"images": [], "allowDerivedImage": True}),
        f"{IMAGES}.allowDerivedImage",
        "did you mean 'allowDerivedImages'?",
    ),
    (
        "unknown command list key",
        socket_doc(command_list={"typ": "deny"}),
        f"{COMMANDS}.typ",
        "did you mean 'type'?",
    ),
    (
        "locked not set",
        json.dumps({"configurationFileVersion": 2, ECI: {"value": True}}),
        f"{ECI}.locked",
        "not set: users may switch ECI off",
    ),
    (
        "version missing",
        json.dumps({ECI: {"value": True, "locked": True}}),
        "configurationFileVersion",
        "missing; Docker Desktop expects 2",
    ),
    (
        "star with other images",
        socket_doc(image_list={"images": ["*", "docker:cli"]}),
        f"{IMAGES}.images",
        '"*" allows every image; the other entries add nothing',
    ),
    (
        "duplicate value",
        '{"configurationFileVersion": 2, "enhancedContainerIsolation": '
        '{"value": true, "locked": true, "value": false}}',
        f"{ECI}.value",
        "key given more than once",
    ),
    (
        "duplicate top-level key",
        '{"configurationFileVersion": 2, "configurationfileversion": 2}',
        "configurationfileversion",
        "key given more than once",
    ),
]


@pytest.mark.parametrize(
    ("text", "path", "fragment"), [c[1:] for c in NOTE_CASES], ids=[c[0] for c in NOTE_CASES]
)
def test_notes(text: str, path: str, fragment: str) -> None:
    notes = notes_by_path(text)
    assert path in notes, notes
    assert any(fragment in m for m in notes[path]), notes[path]


def test_a_clean_file_has_no_notes() -> None:
    assert parse_settings(doc().encode()).notes == ()


# (case id, text, expected value, expected locked, expected images)
GO_SEMANTICS_CASES: list[tuple[str, str, bool, bool, list[str]]] = [
    (
        "capitalized keys",
        '{"ConfigurationFileVersion": 2, "EnhancedContainerIsolation": {"Value": false, '
        '"Locked": true}}',
        False,
        True,
        [],
    ),
    (
        "upper-case keys",
        '{"CONFIGURATIONFILEVERSION": 2, "ENHANCEDCONTAINERISOLATION": {"VALUE": false, '
        '"LOCKED": true, "DOCKERSOCKETMOUNT": {"IMAGELIST": {"IMAGES": ["docker:cli"]}}}}',
        False,
        True,
        ["docker.io/library/docker:cli"],
    ),
    (
        "Kelvin sign in locked",
        '{"configurationFileVersion": 2, "enhancedContainerIsolation": '
        '{"value": true, "loc\\u212aed": true}}',
        True,
        True,
        [],
    ),
    (
        "last value wins",
        '{"configurationFileVersion": 2, "enhancedContainerIsolation": '
        '{"value": true, "locked": true, "value": false}}',
        False,
        True,
        [],
    ),
    (
        "last value wins across case",
        '{"configurationFileVersion": 2, '
        '"enhancedContainerIsolation": {"value": false, "locked": false, "VALUE": true}}',
        True,
        False,
        [],
    ),
    (
        "null does not erase",
        '{"configurationFileVersion": 2, "enhancedContainerIsolation": '
        '{"value": false, "locked": true, "value": null}}',
        False,
        True,
        [],
    ),
    (
        "eci objects merge",
        '{"configurationFileVersion": 2, "enhancedContainerIsolation": '
        '{"value": false}, "EnhancedContainerIsolation": {"locked": true}}',
        False,
        True,
        [],
    ),
    (
        "last images array wins",
        '{"configurationFileVersion": 2, "enhancedContainerIsolation": '
        '{"value": true, "locked": true, "dockerSocketMount": {"imageList": {"images": '
        '["docker:cli"], "Images": ["alpine"]}}}}',
        True,
        True,
        ["docker.io/library/alpine:latest"],
    ),
]


@pytest.mark.parametrize(
    ("text", "value", "locked", "images"),
    [c[1:] for c in GO_SEMANTICS_CASES],
    ids=[c[0] for c in GO_SEMANTICS_CASES],
)
def test_keys_read_as_docker_desktop_reads_them(
    text: str, value: bool, locked: bool, images: list[str]
) -> None:
    settings = parse_settings(text.encode())
    assert (settings.eci.value, settings.eci.locked) == (value, locked)
    assert [p.normalized() for p in settings.eci.socket_mount.image_list.images] == images
    assert settings.configuration_file_version == 2
    assert settings.ignored_keys == ()


def test_docker_desktop_keys_are_listed_as_ignored() -> None:
    text = json.dumps(
        {
            "configurationFileVersion": 2,
            "proxy": {"locked": True, "mode": "manual", "http": "", "https": "", "exclude": []},
            ECI: {"value": True, "locked": True},
            "filesharingAllowedDirectories": [{"path": "$HOME", "sharedByDefault": True}],
            "analyticsEnabled": {"locked": False, "value": False},
        }
    )
    settings = parse_settings(text.encode())
    assert settings.ignored_keys == ("proxy", "filesharingAllowedDirectories", "analyticsEnabled")
    assert settings.notes == ()  # known Docker Desktop keys are not worth a note


def test_unknown_keys_are_ignored_too() -> None:
    settings = parse_settings(
        json.dumps(
            {
                "configurationFileVersion": 2,
                ECI: {"value": True, "locked": True},
                "frobnicate": 1,
                "Proxy": {},
            }
        ).encode()
    )
    assert settings.ignored_keys == ("frobnicate", "Proxy")
    assert [n.json_path for n in settings.notes] == ["frobnicate"]


def test_sha256_and_source() -> None:
    data = doc().encode()
    settings = parse_settings(data, "/some/where.json")
    assert settings.sha256 == hashlib.sha256(data).hexdigest()
    assert settings.source == "/some/where.json"
    other = parse_settings(data + b"\n")
    assert other.sha256 != settings.sha256
    assert other.source is None
    assert other.eci == settings.eci


def test_many_problems_reported_at_once() -> None:
    text = json.dumps(
        {
            "configurationFileVersion": 3,
            ECI: {
                "value": "yes",
                "locked": True,
                "dockerSocketMount": {
                    "imageList": {
                        "images": ["Docker:cli", "docker:cli", 5],
                        "allowDerivedImages": 1,
                    },
                    "commandList": {"type": "block", "commands": ["pus", "push", "containr*"]},
                },
            },
        }
    )
    with pytest.raises(SettingsInvalid) as info:
        parse_settings(text.encode(), "admin-settings.json")
    paths = sorted(p.json_path for p in info.value.problems)
    assert paths == sorted(
        [
            "configurationFileVersion",
            f"{ECI}.value",
            f"{IMAGES}.images[0]",
            f"{IMAGES}.images[2]",
            f"{IMAGES}.allowDerivedImages",
            f"{COMMANDS}.type",
            f"{COMMANDS}.commands[0]",
            f"{COMMANDS}.commands[2]",
        ]
    )
    assert "(8 problem(s))" in str(info.value)
    assert info.value.source == "admin-settings.json"


def test_defaults_when_optional_parts_are_absent() -> None:
    settings = parse_settings(doc(locked=False).encode())
    socket = settings.eci.socket_mount
    assert socket.image_list.images == ()
    assert socket.image_list.allow_derived_images is False
    assert socket.command_list.type is CommandListType.DENY
    assert socket.command_list.commands == ()
    assert settings.eci.locked is False


def test_null_sections_mean_defaults() -> None:
    settings = parse_settings(
        doc(
            dockerSocketMount={"imageList": None, "commandList": {"type": None, "commands": None}}
        ).encode()
    )
    assert settings.eci.socket_mount.image_list.images == ()
    assert settings.eci.socket_mount.command_list.type is CommandListType.DENY


def test_settings_problem_str() -> None:
    assert str(SettingsProblem("a.b", "bad")) == "a.b: bad"
    assert str(SettingsProblem("", "bad", 3, 4)) == "(file) (line 3, column 4): bad"


# -- eciAgent: eci-agent's own top-level key (per-image command lists) ----------------------

EXT = "eciAgent.commandLists"


def ext_doc(extension: Any, **top: Any) -> str:
    """A whole file with a global deny ["push"] list and `"eciAgent": extension`."""
    eci: dict[str, Any] = {
        "value": True,
        "locked": True,
        "dockerSocketMount": {"commandList": {"type": "deny", "commands": ["push"]}},
    }
    return json.dumps({"configurationFileVersion": 2, ECI: eci, "eciAgent": extension, **top})


def test_eci_agent_command_lists_parse() -> None:
    settings = parse_settings(
        ext_doc(
            {
                "commandLists": [
                    {
                        "images": ["docker.io/testcontainers/ryuk:*"],
                        "type": "allow",
                        "commands": ["container ls", "container stop", "container rm"],
                    },
                    {"images": ["docker:cli", "alpine@sha256:" + "a" * 64], "commands": ["build*"]},
                ]
            }
        ).encode()
    )
    first, second = settings.extensions.image_command_lists
    assert [p.normalized() for p in first.images] == ["docker.io/testcontainers/ryuk:*"]
    assert first.command_list.type is CommandListType.ALLOW
    assert [c.text for c in first.command_list.commands] == [
        "container ls",
        "container stop",
        "container rm",
    ]
    assert second.command_list.type is CommandListType.DENY  # the default, as Docker Desktop's
    assert [p.normalized() for p in second.images] == [
        "docker.io/library/docker:cli",
        "docker.io/library/alpine@sha256:" + "a" * 64,
    ]
    assert settings.ignored_keys == ()  # parsed, not ignored
    assert settings.notes == ()
    assert [c.text for c in settings.eci.socket_mount.command_list.commands] == ["push"]


def test_eci_agent_absent_or_empty_means_no_per_image_lists() -> None:
    for text in (
        doc(),
        ext_doc(None),
        ext_doc({}),
        ext_doc({"commandLists": None}),
        ext_doc({"commandLists": []}),
    ):
        assert parse_settings(text.encode()).extensions.image_command_lists == ()


def test_eci_agent_key_matches_case_insensitively() -> None:
    text = json.dumps(
        {
            "configurationFileVersion": 2,
            ECI: {"value": True, "locked": True},
            "ECIAGENT": {"CommandLists": [{"Images": ["docker:cli"], "Commands": ["ps"]}]},
        }
    )
    settings = parse_settings(text.encode())
    assert len(settings.extensions.image_command_lists) == 1
    assert settings.ignored_keys == ()


EXT_PROBLEM_CASES: list[tuple[str, Any, list[tuple[str, str]]]] = [
    (
        "not an object",
        ["x"],
        [("eciAgent", "expected an object, got an array")],
    ),
    (
        "commandLists not an array",
        {"commandLists": {"images": ["docker:cli"]}},
        [(EXT, "expected an array of objects, got an object")],
    ),
    (
        "entry not an object",
        {"commandLists": ["docker:cli"]},
        [(f"{EXT}[0]", 'expected an object, got "docker:cli"')],
    ),
    (
        "no images",
        {"commandLists": [{"commands": ["ps"], "type": "allow"}]},
        [
            (
                f"{EXT}[0].images",
                'expected at least one image reference (such as "docker.io/testcontainers/ryuk:*"); '
                "an entry without images applies to no container",
            )
        ],
    ),
    (
        "images not an array",
        {"commandLists": [{"images": "docker:cli", "commands": ["ps"]}]},
        [(f"{EXT}[0].images", 'expected an array of strings, got "docker:cli"')],
    ),
    (
        "bad image",
        {"commandLists": [{"images": ["docker:cli", "Docker:cli"], "commands": ["ps"]}]},
        [
            (
                f"{EXT}[0].images[1]",
                "expected an image reference, invalid image reference 'Docker:cli': repository "
                "name must be lowercase",
            )
        ],
    ),
    (
        "bad type",
        {"commandLists": [{"images": ["docker:cli"], "type": "only", "commands": ["ps"]}]},
        [(f"{EXT}[0].type", 'expected "allow" or "deny", got "only"')],
    ),
]


@pytest.mark.parametrize(
    ("extension", "expected"),
    [c[1:] for c in EXT_PROBLEM_CASES],
    ids=[c[0] for c in EXT_PROBLEM_CASES],
)
def test_eci_agent_problems_name_their_json_path(
    extension: Any, expected: list[tuple[str, str]]
) -> None:
    with pytest.raises(SettingsInvalid) as info:
        parse_settings(ext_doc(extension).encode())
    assert [(p.json_path, p.message) for p in info.value.problems] == expected


def test_eci_agent_unknown_command_has_suggestions() -> None:
    text = ext_doc({"commandLists": [{"images": ["docker:cli"], "commands": ["ps", "pussh"]}]})
    with pytest.raises(SettingsInvalid) as info:
        parse_settings(text.encode())
    (problem,) = info.value.problems
    assert problem.json_path == f"{EXT}[0].commands[1]"
    assert "unknown docker command 'pussh'" in problem.message
    assert "'push'" in problem.message  # the suggestion


def test_eci_agent_unknown_keys_are_noted() -> None:
    settings = parse_settings(
        ext_doc(
            {
                "commandLists": [
                    {"images": ["docker:cli"], "type": "allow", "commands": ["ps"], "imags": 1}
                ],
                "commandList": {},
            }
        ).encode()
    )
    paths = [n.json_path for n in settings.notes]
    assert paths == ["eciAgent.commandList", f"{EXT}[0].imags"]
    assert "did you mean 'commandLists'?" in settings.notes[0].message
    assert "did you mean 'images'?" in settings.notes[1].message


def test_eci_agent_empty_deny_list_gets_a_note() -> None:
    settings = parse_settings(ext_doc({"commandLists": [{"images": ["docker:cli"]}]}).encode())
    (note,) = settings.notes
    assert note.json_path == f"{EXT}[0]"
    assert "every command" in note.message
    (entry,) = settings.extensions.image_command_lists
    assert entry.command_list.commands == ()


def test_eci_agent_commands_docker_desktop_lacks_get_no_note() -> None:
    """Docker Desktop never reads eciAgent, so its unsupported-command notes do not apply."""
    settings = parse_settings(
        ext_doc(
            {"commandLists": [{"images": ["docker:cli"], "commands": ["plugin", "compose"]}]}
        ).encode()
    )
    assert settings.notes == ()


def test_eci_agent_typo_at_top_level_is_suggested() -> None:
    settings = parse_settings(
        json.dumps(
            {"configurationFileVersion": 2, ECI: {"value": True, "locked": True}, "eciAgnet": {}}
        ).encode()
    )
    assert settings.ignored_keys == ("eciAgnet",)
    (note,) = settings.notes
    assert "did you mean 'eciAgent'?" in note.message


@pytest.mark.parametrize(("value", "audit"), [(True, True), (False, False), (None, False)])
def test_eci_agent_audit_mode(value: Any, audit: bool) -> None:
    doc = {"configurationFileVersion": 2, ECI: {"value": True, "locked": True}}
    doc["eciAgent"] = {"auditMode": value}
    settings = parse_settings(json.dumps(doc).encode())
    assert settings.extensions.audit_mode is audit
    warned = [n for n in settings.notes if n.json_path == "eciAgent.auditMode"]
    assert bool(warned) is audit
    if audit:
        assert "NOT protected" in warned[0].message


def test_eci_agent_audit_mode_must_be_a_boolean() -> None:
    doc = {"configurationFileVersion": 2, ECI: {"value": True}, "eciAgent": {"auditMode": "yes"}}
    with pytest.raises(SettingsInvalid) as err:
        parse_settings(json.dumps(doc).encode())
    assert any(p.json_path == "eciAgent.auditMode" for p in err.value.problems)
