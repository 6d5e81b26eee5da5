"""Parsers for the values people write: pure functions, each raising ``CtfsError``."""

from __future__ import annotations

from ctfs.errors import CtfsError, invalid

# No regular expressions here: ``ctfs exec`` imports this module, and ``re`` alone
# would add milliseconds to every call.
CTID_MAX = 2147483644
MAX_COMMAND_BYTES = 4096


def parse_ctid(name: str) -> int | None:
    """The CTID a directory name stands for, or None when it is not a CTID."""
    if not (name.isascii() and name.isdigit()) or name.startswith("0") or len(name) > 10:
        return None
    value = int(name)
    return value if value <= CTID_MAX else None


def _is_host_label(label: str) -> bool:
    """RFC 1123: 1..63 letters, digits and inner hyphens."""
    return (
        0 < len(label) <= 63
        and label.isascii()
        and all(c.isalnum() or c == "-" for c in label)
        and not label.startswith("-")
        and not label.endswith("-")
    )


def command_text(data: bytes) -> str:
    """One written command: UTF-8 text, no NUL, surrounding white space dropped."""
    if len(data) > MAX_COMMAND_BYTES:
        raise invalid(f"value too long ({len(data)} bytes; at most {MAX_COMMAND_BYTES})")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise invalid("value is not UTF-8 text") from None
    if "\0" in text:
        raise invalid("value contains a NUL byte")
    return text.strip()


def single_word(text: str, what: str) -> str:
    """A value that must be one word (no inner white space)."""
    if not text:
        raise invalid(f"empty value; write {what}")
    if len(text.split()) != 1:
        raise invalid(f"expected one word, got {len(text.split())}; write {what}")
    return text


def parse_hostname(text: str) -> str:
    """An RFC 1123 host name of at most 64 bytes (the kernel's limit)."""
    name = single_word(text, "a host name such as ct101.example.com")
    if len(name) > 64:
        raise invalid(f"host name is {len(name)} characters long; the kernel allows 64")
    for label in name.rstrip(".").split("."):
        if not _is_host_label(label):
            raise invalid(
                f"{label!r} is not a valid host name label (letters, digits and inner "
                "hyphens, 1..63 characters)"
            )
    return name


def shown(data: bytes, limit: int = 64) -> str:
    """How a written value is quoted in ``events``: printable, short, unambiguous."""
    text = data.decode("utf-8", errors="backslashreplace").strip()
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
    if len(text) > limit:
        text = text[:limit] + f"...({len(data)} bytes)"
    return text


__all__ = ["CtfsError", "command_text", "parse_ctid", "parse_hostname", "shown", "single_word"]
