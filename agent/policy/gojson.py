"""JSON read the way the Docker engine (Go's encoding/json) reads it.

Theory of operation
-------------------
Go decodes a JSON object into a struct by matching each key to a field name, preferring an
exact match but accepting a case-insensitive one (`"hostconfig"` fills `HostConfig`, and so do
the Kelvin sign for `k` and the long s for `s`). When the same field appears twice, the later
key is decoded *into* what the earlier one left: objects merge, arrays and scalars are replaced,
and `null` leaves a struct or scalar as it was. Maps keep keys exactly, last one winning.

A proxy that reads bodies with a plain `dict` would see the first `Binds` while the engine acts
on the last, or miss `"binds"` altogether. So objects stay as ordered key/value pairs
(`GoObject`), and the policy asks for *fields*:

- `obj.field("HostConfig")` folds every matching key in order: object after object merges (the
  pairs are concatenated, which is exactly a merge under these same rules), anything else
  replaces, and `null` never erases what came before. The last rule errs towards seeing more
  than the engine: the policy may refuse a request the engine would have read as empty, never
  the reverse.
- An array given again is decoded *into* the slice the earlier one left, as Go does
  (golang/go#21092): element `i` of the new array is decoded into element `i` of the old backing
  array, so an object element merges with the old one and a `null` element leaves the old
  element as it was; elements past the old length but within its capacity come back too. So
  `"Mounts": [{"Type": "bind", "Source": S}], "Mounts": [{"Target": "/s"}]` is a bind of `S`
  to the engine, and the policy must see it that way (`GoArray` keeps the hidden elements).
- `obj.entries()` reads a map: exact keys, last one wins.

Anything Go would refuse (NaN, Infinity) is refused here too.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

from agent.policy.goslice import GoArray

_FOLD_SPECIAL = {"\u212a": "k", "\u017f": "s"}  # Kelvin sign, long s: Go's EqualFold pairs


def _fold_char(c: str) -> str:
    special = _FOLD_SPECIAL.get(c)
    if special is not None:
        return special
    if c.isascii():
        return c.lower()
    folded = c.lower()
    return folded if len(folded) == 1 else c


@functools.lru_cache(maxsize=4096)
def fold(name: str) -> str:
    """The case-folded form under which Go matches a key to a struct field."""
    if name.isascii():
        return name.lower()  # the same as folding each ASCII letter (hot path)
    return "".join(_fold_char(c) for c in name)


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Any = _Missing()


@dataclass(frozen=True, slots=True)
class GoObject:
    """A JSON object as ordered (key, value) pairs, duplicates and all."""

    pairs: tuple[tuple[str, Any], ...] = ()
    #: folded key -> the values under it, in order; built on the first `field` call (an
    #: engine body's HostConfig has ~70 keys and the policy asks for ~60 fields of it).
    _index: dict[str, list[Any]] | None = dataclass_field(
        default=None, init=False, repr=False, compare=False, hash=False
    )

    def field(self, name: str, default: Any = MISSING) -> Any:
        """The value Go would decode into struct field `name` (see the module doc)."""
        index = self._index
        if index is None:
            index = {}
            for key, value in self.pairs:
                folded = fold(key)
                found = index.get(folded)
                if found is None:
                    index[folded] = [value]
                else:
                    found.append(value)
            object.__setattr__(self, "_index", index)
        values = index.get(fold(name))
        if values is None:
            return default
        result: Any = MISSING
        for value in values:
            if value is None:
                if result is MISSING:
                    result = None
                continue
            result = _decode_into(result, value)
        return default if result is MISSING else result

    def has_field(self, name: str) -> bool:
        return self.field(name) is not MISSING

    def entries(self) -> dict[str, Any]:
        """The object read as a Go map: exact keys, the last duplicate wins."""
        return dict(self.pairs)

    def keys(self) -> Iterator[str]:
        return (k for k, _ in self.pairs)

    def duplicate_keys(self) -> tuple[str, ...]:
        """Keys that appear more than once, compared as Go compares field names."""
        seen: dict[str, str] = {}
        dups: list[str] = []
        for key, _ in self.pairs:
            f = fold(key)
            if f in seen and key not in dups:
                dups.append(key)
            seen.setdefault(f, key)
        return tuple(dups)

    def to_plain(self) -> dict[str, Any]:
        """A plain dict (last key wins, nested objects converted) for display only."""
        return {k: to_plain(v) for k, v in self.pairs}


def _decode_into(old: Any, new: Any) -> Any:
    """The value Go holds after decoding JSON `new` into a value that already holds `old`.

    A `null` leaves the old value (Go keeps a struct or scalar; it would clear a pointer or
    slice, and keeping errs towards seeing more).
    """
    if new is None:
        return old
    if isinstance(new, GoObject):
        if isinstance(old, GoObject):
            return GoObject(old.pairs + new.pairs)
        return new
    if isinstance(new, list):
        return _decode_array_into(old, new)
    return new


def _decode_array_into(old: Any, new: list[Any]) -> GoArray:
    """Go 1.x `decodeState.array` for a slice: grow by half (at least 4), keep the backing."""
    if isinstance(old, list):
        backing: list[Any] = list(old) + list(getattr(old, "hidden", []))
        length = len(old)
    else:
        backing, length = [], 0
    cap = len(backing)
    i = 0
    for element in new:
        if i >= cap:
            cap = max(cap + cap // 2, 4)
            backing = backing[:length] + [MISSING] * (cap - length)
        if i >= length:
            length = i + 1
        backing[i] = _decode_into(backing[i], element)
        i += 1
    if i == 0:
        return GoArray([])
    length = min(length, i)
    visible = [None if v is MISSING else v for v in backing[:length]]
    return GoArray(visible, backing[length:])


def to_plain(value: Any) -> Any:
    if isinstance(value, GoObject):
        return value.to_plain()
    if isinstance(value, list):
        return [to_plain(v) for v in value]
    return value


class JSONSyntaxError(ValueError):
    """Text that is not one well-formed JSON value; `line` and `column` count from 1."""

    def __init__(self, message: str, line: int, column: int) -> None:
        super().__init__(f"line {line}, column {column}: {message}")
        self.message = message
        self.line = line
        self.column = column


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _explain(err: json.JSONDecodeError) -> str:
    text = err.doc
    before = text[: err.pos].rstrip()
    if before.endswith(",") and text[err.pos : err.pos + 1] in ("}", "]"):
        return "trailing comma before the closing bracket (JSON allows none)"
    if err.msg.startswith("Extra data"):
        return "unexpected text after the JSON value"
    return err.msg[:1].lower() + err.msg[1:]


def loads(text: str) -> Any:
    """Parse JSON text; objects become `GoObject`. Raises `JSONSyntaxError` with a position."""
    if text.startswith("\ufeff"):
        raise JSONSyntaxError("a UTF-8 byte order mark (BOM) is not allowed before the JSON", 1, 1)
    try:
        return json.loads(
            text,
            object_pairs_hook=lambda pairs: GoObject(tuple(pairs)),
            parse_constant=_refuse_constant,
        )
    except json.JSONDecodeError as err:
        # A trailing comma is reported by the json module at the bracket after it.
        line, col = err.lineno, err.colno
        msg = _explain(err)
        if msg.startswith("trailing comma"):
            comma = err.doc.rfind(",", 0, err.pos)
            line = err.doc.count("\n", 0, comma) + 1
            col = comma - (err.doc.rfind("\n", 0, comma) + 1) + 1
        raise JSONSyntaxError(msg, line, col) from None
    except ValueError as err:
        raise JSONSyntaxError(str(err), 1, 1) from None


def loads_bytes(data: bytes) -> Any:
    """Decode UTF-8 (strictly) and parse; a BOM or invalid UTF-8 is a `JSONSyntaxError`."""
    if data.startswith(b"\xef\xbb\xbf"):
        raise JSONSyntaxError("a UTF-8 byte order mark (BOM) is not allowed before the JSON", 1, 1)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        col = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise JSONSyntaxError("the text is not valid UTF-8", line, col) from None
    return loads(text)


def dumps(value: Any) -> str:
    """Serialize, keeping a `GoObject`'s pairs (duplicates included) in order; compact, ASCII
    (as `json.dumps` writes each scalar)."""
    parts: list[str] = []
    _dump(value, parts.append)
    return "".join(parts)


_encode_str: Callable[[str], str] = json.encoder.encode_basestring_ascii


def _dump(value: Any, out: Callable[[str], None]) -> None:
    if isinstance(value, str):
        out(_encode_str(value))
    elif isinstance(value, GoObject):
        sep = "{"
        for key, item in value.pairs:
            out(sep)
            out(_encode_str(key))
            out(":")
            _dump(item, out)
            sep = ","
        out("}" if sep == "," else "{}")
    elif isinstance(value, list):
        sep = "["
        for item in value:
            out(sep)
            _dump(item, out)
            sep = ","
        out("]" if sep == "," else "[]")
    elif value is None:
        out("null")
    elif value is True:
        out("true")
    elif value is False:
        out("false")
    elif type(value) is int:
        out(int.__repr__(value))
    else:
        out(json.dumps(value))


def with_field(obj: GoObject, name: str, value: Any) -> GoObject:
    """`obj` with every key Go would read as field `name` replaced by one `name: value`."""
    wanted = fold(name)
    pairs = tuple((k, v) for k, v in obj.pairs if k != name and fold(k) != wanted)
    return GoObject(pairs + ((name, value),))
