"""Read user YAML (recipes, data.yaml) safely, with one-line errors.

PyYAML's ``safe_load`` runs no code, but it still expands aliases (a 15-line
"billion laughs" becomes gigabytes), keeps the last of two equal keys silently,
recurses once per nesting level and accepts UTF-16. This loader refuses anchors
and aliases, duplicate keys, nesting deeper than :data:`MAX_DEPTH`, files larger
than :data:`MAX_BYTES` and anything that is not UTF-8 text. Every problem is
raised as the caller's :class:`~compress.errors.CompressError` subclass with the
file, the line and at most :data:`QUOTE` characters of the offending input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from compress.errors import CompressError

MAX_BYTES = 4 * 1024 * 1024  # a recipe or data.yaml is a few KiB
MAX_DEPTH = 64  # nested mappings / lists
QUOTE = 200  # characters of user input quoted in an error message


def clip(value: Any, limit: int = QUOTE) -> str:
    """``value`` as one line of at most about ``limit`` characters (for error messages)."""
    text = value if isinstance(value, str) else repr(value)
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[: limit + 1])
    return text if len(text) <= limit else f"{text[:limit]}... ({_length(value)} chars)"


def _length(value: Any) -> int:
    return len(value) if isinstance(value, str) else len(repr(value))


class _Refused(Exception):
    """A construct this loader does not accept; the message starts with the line."""


class _Loader(yaml.SafeLoader):
    """SafeLoader without aliases or duplicate keys, with a nesting limit."""

    _depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            kind = "alias" if isinstance(event, yaml.AliasEvent) else "anchor"
            sign = "*" if kind == "alias" else "&"
            raise _Refused(f"line {event.start_mark.line + 1}: YAML {kind} {sign}{clip(anchor, 40)} "
                           "is not supported (write the value out)")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(f"line {event.start_mark.line + 1}: nested more than {MAX_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key, line = self.construct_object(key_node), key_node.start_mark.line + 1
                try:
                    first = seen.get(key)
                except TypeError:  # unhashable: SafeConstructor reports it
                    continue
                if first is not None:
                    raise _Refused(f"line {line}: duplicate key '{clip(key, 80)}' (first at line {first})")
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def loads(text: str, source: str, error: type[CompressError] = CompressError) -> Any:
    """Parse one YAML document from ``text``; raise ``error`` naming ``source`` on any problem."""
    loader = None
    try:
        loader = _Loader(text)  # the reader checks every character here
        return loader.get_single_data()
    except _Refused as e:
        raise error(f"{source}: {e}") from None
    except yaml.reader.ReaderError as e:
        raise error(f"{source}: not valid YAML: character #x{e.character:04x} at offset {e.position} "
                    "is not allowed") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None)
        raise error(f"{source}: not valid YAML{where}" + (f": {clip(problem)}" if problem else "")) from None
    except (ValueError, OverflowError, RecursionError, MemoryError) as e:  # e.g. an int of 10,000 digits
        raise error(f"{source}: not valid YAML ({type(e).__name__}: {clip(str(e))})") from None
    finally:
        if loader is not None:
            loader.dispose()


def decode(data: bytes, source: str, error: type[CompressError] = CompressError) -> str:
    """UTF-8 text of ``data`` (a BOM is allowed); UTF-16/32, binary and other bytes are refused."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise error(f"{source}: UTF-16/32 text; save it as UTF-8")
    if b"\x00" in data:
        raise error(f"{source}: a binary file, not YAML text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise error(f"{source}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})") from None


def load_file(path: str | Path, error: type[CompressError] = CompressError, what: str = "YAML file") -> Any:
    """Read and parse the YAML file ``path`` under the rules above (``None`` for an empty file)."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise error(f"{p}: {what} not found") from None
    except IsADirectoryError:
        raise error(f"{p}: is a folder, not a {what}") from None
    except OSError as e:
        raise error(f"{p}: cannot read {what} ({e.strerror or type(e).__name__})") from None
    if len(data) > MAX_BYTES:
        raise error(f"{p}: larger than {MAX_BYTES // 2**20} MiB: not a {what}")
    return loads(decode(data, str(p), error), str(p), error)
