"""From write() calls to commands: what one command written to a control file is.

A command is everything written to one open file between two flushes (a flush
happens at every close of any descriptor of it, so ``exec 3>state; echo a >&3;
echo b >&3`` writes two commands).  Shells and printf may write one command in
several write() calls; it is still one command, applied all or nothing:

- The bytes are collected in order; a write that is not contiguous is EINVAL.
- When a write leaves the collected bytes ending with a newline, the whole command
  so far is carried out at once, so ``echo`` gets its error from write().
- Bytes written after that extend the same command: the whole of it is carried out
  again (the files' commands are idempotent whole values or line sets), and if it
  then fails, the settings the command had changed are put back as they were
  before its first part.  A command that does more than set settings (``state``,
  ``template``) cannot be undone, so it cannot be extended once carried out.
- Whatever is left when the file is flushed (no final newline) is carried out
  then, and its error comes back from close().

A host file's command (``/ctfs/peers``) is its whole new contents: collected the
same way, carried out once at the flush, its error from close().
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass, field

from ctfs.errors import CtfsError, invalid
from ctfs.files import ControlFile, HostFile
from ctfs.model import settings
from ctfs.model.caller import Caller
from ctfs.model.container import Container
from ctfs.model.host import Host
from ctfs.policy.values import MAX_COMMAND_BYTES, command_text, shown

log = logging.getLogger(__name__)


@dataclass
class Command:
    """The command being written to one open control file."""

    data: bytearray = field(default_factory=bytearray)
    position: int = 0  # the file offset of its first byte
    carried_out: int = 0  # how many of its bytes have been carried out
    saved: dict[str, str] | None = None  # the settings before its first part
    limit: int = MAX_COMMAND_BYTES

    @property
    def pending(self) -> bool:
        return len(self.data) > self.carried_out

    def add(self, offset: int, buf: bytes) -> None:
        expected = self.position + len(self.data)
        if offset != expected:
            raise invalid(
                f"write at offset {offset}, expected {expected}; write a command whole, in order"
            )
        if len(self.data) + len(buf) > self.limit:
            raise invalid(
                f"value too long ({len(self.data) + len(buf)} bytes; at most {self.limit})"
            )
        self.data += buf

    def end(self) -> None:
        """The command is over; the next one starts where the file position now is."""
        self.position += len(self.data)
        self.data.clear()
        self.carried_out = 0
        self.saved = None


async def write(
    command: Command, decl: ControlFile, ct: Container, caller: Caller, offset: int, buf: bytes
) -> None:
    """Add ``buf``; carry the command out if it now ends a line.  Errors are recorded."""
    try:
        command.add(offset, buf)
    except CtfsError as exc:
        raise _recorded(ct, decl, bytes(command.data) + buf, exc) from None
    if command.data.endswith(b"\n"):
        await carry_out(command, decl, ct, caller)


async def finish(command: Command, decl: ControlFile, ct: Container, caller: Caller) -> None:
    """At flush: carry out what is left; the next write starts a new command."""
    try:
        if command.pending:
            await carry_out(command, decl, ct, caller)
    finally:
        command.end()


async def carry_out(command: Command, decl: ControlFile, ct: Container, caller: Caller) -> None:
    assert decl.apply is not None
    data = bytes(command.data)
    extending = command.carried_out > 0
    try:
        if extending and not decl.settings_only:
            raise invalid(
                f"{decl.name} takes one command per write; the first part was already carried out"
            )
        if not extending:
            command.saved = dict(ct.settings)
        await decl.apply(ct, command_text(data), caller)
    except CtfsError as exc:
        command.carried_out = len(data)  # refused as a whole: nothing more to carry out
        if extending and decl.settings_only and command.saved is not None:
            await _undo_first_part(ct, decl, command.saved)
        raise _recorded(ct, decl, data, exc) from None
    command.carried_out = len(data)


async def _undo_first_part(ct: Container, decl: ControlFile, saved: dict[str, str]) -> None:
    try:
        await settings.revert(
            ct, saved, f"{decl.name}: undone, the rest of the command was refused"
        )
    except CtfsError as exc:
        ct.events.record(f"{decl.name}: cannot undo the first part: {exc.sentence}", logging.ERROR)


def _recorded(ct: Container, decl: ControlFile, data: bytes, exc: CtfsError) -> CtfsError:
    verb = "failed" if exc.errno_value == errno.EIO else "rejected"
    ct.events.record(f'{decl.name}: {verb} "{shown(data)}": {exc.sentence}', logging.WARNING)
    exc.recorded = True
    return exc


# A host file's whole contents: 256 peers of about 100 bytes.
HOST_FILE_MAX = 32768


async def write_host(command: Command, decl: HostFile, offset: int, buf: bytes) -> None:
    """Add ``buf`` to a host file's new contents (carried out at the flush)."""
    command.limit = HOST_FILE_MAX
    try:
        command.add(offset, buf)
    except CtfsError as exc:
        log.warning("%s: rejected: %s", decl.name, exc.sentence)
        exc.recorded = True
        raise


async def finish_host(command: Command, decl: HostFile, host: Host, caller: Caller) -> None:
    """At flush: a host file's new contents, all of it, at once; refusals are logged."""
    assert decl.apply is not None
    data = bytes(command.data)
    command.end()
    try:
        await decl.apply(host, data.decode("utf-8", errors="replace"), caller)
    except CtfsError as exc:
        verb = "failed" if exc.errno_value == errno.EIO else "rejected"
        log.warning("%s: %s: %s", decl.name, verb, exc.sentence)
        exc.recorded = True
        raise
