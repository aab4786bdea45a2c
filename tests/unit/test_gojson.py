"""agent.policy.gojson: JSON read with Go's encoding/json struct-decoding semantics."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from agent.policy import gojson
from agent.policy.gojson import MISSING, GoObject, JSONSyntaxError


def obj(text: str) -> GoObject:
    value = gojson.loads(text)
    assert isinstance(value, GoObject)
    return value


# (case id, JSON text, field asked for, the value Go would decode into that field)
FIELD_CASES: list[tuple[str, str, str, Any]] = [
    ("exact name", '{"Binds": ["/a:/a"]}', "Binds", ["/a:/a"]),
    ("lower case key", '{"binds": ["/a:/a"]}', "Binds", ["/a:/a"]),
    ("upper case key", '{"BINDS": ["/a:/a"]}', "Binds", ["/a:/a"]),
    ("mixed case key", '{"hOsTcOnFiG": 1}', "HostConfig", 1),
    ("Kelvin sign folds to k", '{"\\u212aind": "x"}', "kind", "x"),
    ("Kelvin sign folds to K", '{"\\u212aind": "x"}', "Kind", "x"),
    ("long s folds to s", '{"\\u017fecret": 1}', "secret", 1),
    ("long s folds to S", '{"privileged\\u017f": 1}', "PrivilegedS", 1),
    ("escaped ASCII in key", '{"\\u0042inds": ["/x:/y"]}', "Binds", ["/x:/y"]),
    ("escaped lower-case key", '{"\\u0062inds": ["/x:/y"]}', "Binds", ["/x:/y"]),
    ("last scalar wins", '{"value": true, "value": false}', "value", False),
    ("last scalar wins across case", '{"value": true, "VALUE": false}', "value", False),
    ("last array replaces", '{"a": [1, 2], "A": [3]}', "a", [3]),
    ("empty array replaces", '{"a": [1, 2], "a": []}', "a", []),
    ("null does not erase a scalar", '{"a": 1, "a": null}', "a", 1),
    ("null does not erase an array", '{"a": [1], "A": null}', "a", [1]),
    ("null alone is null", '{"a": null}', "a", None),
    ("null then value", '{"a": null, "a": 2}', "a", 2),
    ("scalar replaces object", '{"a": {"x": 1}, "a": 5}', "a", 5),
    ("other keys do not match", '{"host_config": 1, "hostconfigs": 2}', "HostConfig", MISSING),
    # golang/go#21092: a repeated array is decoded into the earlier slice's elements
    ("array elements merge", '{"a": [{"x": 1}], "a": [{"y": 2}]}', "a", [{"x": 1, "y": 2}]),
    ("null element keeps the old one", '{"a": ["s"], "a": [null]}', "a", ["s"]),
    ("null element, nothing before", '{"a": [null]}', "a", [None]),
    ("shorter array truncates", '{"a": ["s", "t"], "a": ["u"]}', "a", ["u"]),
    (
        "hidden backing elements come back",
        '{"a": ["u", "s"], "a": ["u"], "A": ["u", null]}',
        "a",
        ["u", "s"],
    ),
    (
        "growth past capacity drops the hidden elements",
        '{"a": [1, 2, 3], "a": [1], "a": [null, null, null, null, null]}',
        "a",
        [1, 2, 3, None, None],
    ),
    ("absent field", "{}", "Binds", MISSING),
]


@pytest.mark.parametrize(
    ("text", "name", "expected"), [c[1:] for c in FIELD_CASES], ids=[c[0] for c in FIELD_CASES]
)
def test_field_matches_go(text: str, name: str, expected: Any) -> None:
    got = obj(text).field(name)
    if expected is MISSING:
        assert got is MISSING
    else:
        assert gojson.to_plain(got) == expected


def test_field_default_and_has_field() -> None:
    o = obj('{"a": 1, "b": null}')
    assert o.field("c", "fallback") == "fallback"
    assert o.has_field("A")
    assert o.has_field("b")  # null is present, just empty
    assert not o.has_field("c")
    assert not MISSING  # MISSING is falsy, distinct from None
    assert MISSING is not None


# (case id, JSON text, the merged object's plain form)
MERGE_CASES = [
    ("disjoint keys merge", '{"o": {"x": 1}, "O": {"y": 2}}', {"x": 1, "y": 2}),
    ("inner last wins", '{"o": {"x": 1}, "o": {"x": 2}}', {"x": 2}),
    ("null between objects", '{"o": {"x": 1}, "o": null, "o": {"y": 2}}', {"x": 1, "y": 2}),
    ("object after scalar", '{"o": 1, "o": {"y": 2}}', {"y": 2}),
]


@pytest.mark.parametrize(
    ("text", "expected"), [c[1:] for c in MERGE_CASES], ids=[c[0] for c in MERGE_CASES]
)
def test_objects_merge(text: str, expected: dict[str, Any]) -> None:
    merged = obj(text).field("o")
    assert isinstance(merged, GoObject)
    assert merged.to_plain() == expected


def test_merged_object_fields_follow_go_rules() -> None:
    merged = obj('{"HostConfig": {"Binds": ["/a:/a"]}, "hostconfig": {"binds": ["/b:/b"]}}')
    host = merged.field("HostConfig")
    assert host.field("Binds") == ["/b:/b"]


def test_entries_are_exact_keys_last_wins() -> None:
    o = obj('{"a": 1, "A": 2, "a": 3, "\\u212a": 4}')
    assert o.entries() == {"a": 3, "A": 2, "\u212a": 4}
    assert list(o.keys()) == ["a", "A", "a", "\u212a"]


def test_duplicate_keys_compare_folded() -> None:
    o = obj('{"value": 1, "Value": 2, "locked": 1, "loc\\u212aed": 2, "x": 1}')
    assert o.duplicate_keys() == ("Value", "loc\u212aed")
    assert obj('{"a": 1, "b": 2}').duplicate_keys() == ()


def test_fold() -> None:
    assert gojson.fold("HostConfig") == "hostconfig"
    assert gojson.fold("\u212a\u017f") == "ks"
    assert gojson.fold("Ärger") == gojson.fold("äRGER")


def test_repeated_arrays_inside_merged_objects() -> None:
    merged = obj(
        '{"HostConfig": {"Mounts": [{"Type": "bind", "Source": "/s"}]}, '
        '"hostconfig": {"mounts": [{"Target": "/t"}]}}'
    ).field("HostConfig")
    assert gojson.to_plain(merged.field("Mounts")) == [
        {"Type": "bind", "Source": "/s", "Target": "/t"}
    ]


def test_empty_array_clears_and_forgets() -> None:
    assert obj('{"a": ["s"], "a": [], "a": [null]}').field("a") == [None]


def test_nested_values_parse() -> None:
    value = gojson.loads('[{"a": [1, 2.5, "s", true, null]}]')
    assert gojson.to_plain(value) == [{"a": [1, 2.5, "s", True, None]}]
    assert isinstance(value[0], GoObject)


# (case id, text, message, line, column)
SYNTAX_CASES: list[tuple[str, str, str, int, int]] = [
    ("NaN", '{"a": NaN}', "NaN is not valid JSON", 1, 1),
    ("Infinity", '{"a": Infinity}', "Infinity is not valid JSON", 1, 1),
    ("-Infinity", '{"a": -Infinity}', "-Infinity is not valid JSON", 1, 1),
    ("BOM", '\ufeff{"a": 1}', "a UTF-8 byte order mark (BOM) is not allowed before the JSON", 1, 1),
    (
        "trailing comma in object",
        '{\n  "a": 1,\n}',
        "trailing comma before the closing bracket (JSON allows none)",
        2,
        9,
    ),
    (
        "trailing comma in array",
        '{"a": [1, 2,]}',
        "trailing comma before the closing bracket (JSON allows none)",
        1,
        12,
    ),
    (
        "trailing comma before spaces",
        "[1,\n\n   ]",
        "trailing comma before the closing bracket (JSON allows none)",
        1,
        3,
    ),
    ("missing colon", '{"a" 1}', "expecting ':' delimiter", 1, 6),
    ("missing value", '{"a": }', "expecting value", 1, 7),
    ("empty text", "", "expecting value", 1, 1),
    ("extra data", '{"a": 1} {"b": 2}', "unexpected text after the JSON value", 1, 10),
    ("single quotes", "{'a': 1}", "expecting property name enclosed in double quotes", 1, 2),
    ("unterminated string", '{"a": "x}', "unterminated string starting at", 1, 7),
    ("comment", '{"a": 1 // no\n}', "expecting ',' delimiter", 1, 9),
]


@pytest.mark.parametrize(
    ("text", "message", "line", "column"),
    [c[1:] for c in SYNTAX_CASES],
    ids=[c[0] for c in SYNTAX_CASES],
)
def test_syntax_errors_name_the_position(text: str, message: str, line: int, column: int) -> None:
    with pytest.raises(JSONSyntaxError) as info:
        gojson.loads(text)
    err = info.value
    assert err.message.startswith(message)
    assert (err.line, err.column) == (line, column)
    assert str(err).startswith(f"line {line}, column {column}: ")


# (case id, bytes, message prefix, line, column)
BYTES_CASES: list[tuple[str, bytes, str, int, int]] = [
    ("BOM", b'\xef\xbb\xbf{"a": 1}', "a UTF-8 byte order mark (BOM)", 1, 1),
    ("invalid UTF-8 on line 1", b'{"a": "\xff"}', "the text is not valid UTF-8", 1, 8),
    ("invalid UTF-8 on line 2", b'{\n  "a": "\xc3\x28"}', "the text is not valid UTF-8", 2, 9),
    ("truncated sequence", b'{"a": "\xe2\x82"}', "the text is not valid UTF-8", 1, 8),
    ("UTF-16", '{"a": 1}'.encode("utf-16"), "the text is not valid UTF-8", 1, 1),
]


@pytest.mark.parametrize(
    ("data", "message", "line", "column"),
    [c[1:] for c in BYTES_CASES],
    ids=[c[0] for c in BYTES_CASES],
)
def test_bytes_errors(data: bytes, message: str, line: int, column: int) -> None:
    with pytest.raises(JSONSyntaxError) as info:
        gojson.loads_bytes(data)
    assert info.value.message.startswith(message)
    assert (info.value.line, info.value.column) == (line, column)


def test_valid_utf8_bytes() -> None:
    value = gojson.loads_bytes('{"name": "Zoë ☃"}'.encode())
    assert value.field("Name") == "Zoë ☃"


# -- the fast paths against the plain definitions they replace -----------------------------------
# `GoObject.field` reads an index of folded keys and `dumps` writes through one join; each is
# compared here, on random bodies full of repeated and case-folded keys, with the plain
# linear definition it must equal.


def reference_field(o: GoObject, name: str, default: Any = MISSING) -> Any:
    wanted = gojson.fold(name)
    result: Any = MISSING
    for key, value in o.pairs:
        if key != name and gojson.fold(key) != wanted:
            continue
        if value is None:
            if result is MISSING:
                result = None
            continue
        result = gojson._decode_into(result, value)
    return default if result is MISSING else result


def reference_dumps(value: Any) -> str:
    if value is MISSING:  # a slot of Go's backing array never written (in `hidden` only)
        return "MISSING"
    if isinstance(value, GoObject):
        return "{" + ",".join(f"{json.dumps(k)}:{reference_dumps(v)}" for k, v in value.pairs) + "}"
    if isinstance(value, list):
        return "[" + ",".join(reference_dumps(v) for v in value) + "]"
    return json.dumps(value)


KEYS = [
    "Binds",
    "binds",
    "BINDS",
    "\u212aind",
    "kind",
    "Kind",
    "Privileged",
    "privileged\u017f",
    "HostConfig",
    "hostconfig",
    "Mounts",
    "",
    "é",
    "\u2028",
    'q"uote',
    "back\\slash",
]
SCALARS: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    2**70,
    1.5,
    -0.0,
    1e-7,
    "",
    "x",
    "é\u2028\U0001f600",
    "/var/run/docker.sock",
    'a"b\\c\n',
]


def random_value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth < 4 and roll < 0.3:
        return GoObject(
            tuple((rng.choice(KEYS), random_value(rng, depth + 1)) for _ in range(rng.randrange(6)))
        )
    if depth < 4 and roll < 0.45:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return rng.choice(SCALARS)


def test_field_equals_the_linear_definition_on_random_objects() -> None:
    rng = random.Random(0xF1E1D)
    for _ in range(3000):
        o = GoObject(tuple((rng.choice(KEYS), random_value(rng)) for _ in range(rng.randrange(9))))
        for name in ("Binds", "Kind", "kind", "HostConfig", "Privilegeds", "Mounts", "absent"):
            for _ in range(2):  # the first call builds the index, the second reads it
                got = o.field(name, "DEFAULT")
                want = reference_field(o, name, "DEFAULT")
                assert reference_dumps(got) == reference_dumps(want), (o, name)
                assert type(got) is type(want)
                if isinstance(want, gojson.GoArray):
                    assert reference_dumps(got.hidden) == reference_dumps(want.hidden)


def test_the_index_is_not_part_of_equality_or_hash() -> None:
    a, b = obj('{"A": 1, "a": 2}'), obj('{"A": 1, "a": 2}')
    a.field("a")
    assert a == b and hash(a) == hash(b)
    assert "_index" not in repr(a)


def test_dumps_equals_the_plain_definition_on_random_values() -> None:
    rng = random.Random(0xD0D0)
    for _ in range(3000):
        value = random_value(rng)
        text = gojson.dumps(value)
        assert text == reference_dumps(value)
        assert text.isascii()
        if not isinstance(value, float):
            assert reference_dumps(gojson.loads(text)) == text  # reads back as it was written


def test_dumps_writes_visible_array_elements_only() -> None:
    o = obj('{"M": [{"S": "/a"}, {"S": "/b"}], "M": [{"T": "/t"}]}')
    merged = o.field("M")
    assert merged.hidden  # Go's backing array still holds the second element
    assert gojson.dumps(merged) == '[{"S":"/a","T":"/t"}]'
