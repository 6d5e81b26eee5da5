"""Raw data between this host and a peer: a private area's btrfs stream, a file.

Invariants:
- Data crosses in the link's chunks and is complete only when its empty end
  chunk came; a sender that failed sends no end, so a receiver never takes a
  broken stream or a truncated file for a whole one.
- A received file appears under its name only once complete and synced
  (written as ``NAME.new`` and renamed); a failed receive leaves neither.
- The first failure (btrfs's, the disk's, the link's) is the one raised, as a
  ``RelayError`` the caller words.  A receiver that fails still reads the rest
  of the data (and drops it), so the sender hears the reason, not a reset.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

import trio

from ctfs.kernel.api import AreaStreams, PeerLinkError, PeerLinks, StorageError

CHUNK = 1 << 20
# A 1 MiB pipe between btrfs and the link (the default pipe-max-size): with the
# 64 KiB default, a 200 MB area took 3200 wake-ups of the relay instead of 200.
PIPE_SIZE = 1 << 20
_LINK_ERRORS = (PeerLinkError, OSError, trio.BrokenResourceError, trio.ClosedResourceError)


class RelayError(Exception):
    """Data did not cross; the text says which side failed and why."""


class LinkBroken(RelayError):
    """...because the link to the peer broke."""


def _pipe() -> tuple[int, int]:
    r, w = os.pipe2(os.O_CLOEXEC)
    with contextlib.suppress(OSError):  # a smaller pipe only costs wake-ups
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    return r, w


async def send_area(
    links: PeerLinks,
    stream: trio.abc.Stream,
    streams: AreaStreams,
    snapshot: Path,
    parent: Path | None,
) -> int:
    """Send ``snapshot`` (its difference from ``parent``); the bytes sent."""
    r, w = _pipe()
    failure: list[BaseException] = []

    async def produce() -> None:
        try:
            await trio.to_thread.run_sync(streams.send, snapshot, w, parent)
        except StorageError as exc:
            failure.append(exc)
        finally:
            os.close(w)

    sent = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(produce)
        async with trio.lowlevel.FdStream(r) as reader:
            try:
                while chunk := await reader.receive_some(CHUNK):
                    await links.send_chunk(stream, chunk)
                    sent += len(chunk)
            except _LINK_ERRORS as exc:
                failure.append(LinkBroken(exc or type(exc).__name__))
    if failure:
        raise _relay_error(failure[0])
    await _end(links, stream)
    return sent


async def receive_area(
    links: PeerLinks,
    stream: trio.abc.Stream,
    streams: AreaStreams,
    into: Path,
    parent: Path | None,
) -> tuple[Path, int]:
    """Receive one stream into ``into``; the new read-only subvolume, and its bytes."""
    r, w = _pipe()
    failure: list[BaseException] = []
    result: list[Path] = []

    async def consume() -> None:
        try:
            result.append(await trio.to_thread.run_sync(streams.receive, r, into, parent))
        except StorageError as exc:
            failure.append(exc)
        finally:
            os.close(r)

    received = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        async with trio.lowlevel.FdStream(w) as writer:
            try:
                while chunk := await links.receive_chunk(stream):
                    await writer.send_all(chunk)
                    received += len(chunk)
            except trio.BrokenResourceError:
                # btrfs stopped reading (its own error says why): the rest of the
                # stream is read and dropped, so the sender gets to hear why.
                await _drain(links, stream)
            except _LINK_ERRORS as exc:
                failure.insert(0, LinkBroken(exc or type(exc).__name__))
    if failure or not result:
        raise _relay_error(failure[0] if failure else RelayError("btrfs receive made nothing"))
    return result[0], received


async def send_file(links: PeerLinks, stream: trio.abc.Stream, path: Path) -> int:
    """Send the whole file at ``path``; its size."""
    sent = 0
    try:
        async with await trio.open_file(path, "rb") as f:
            while chunk := await f.read(CHUNK):
                await links.send_chunk(stream, chunk)
                sent += len(chunk)
    except _LINK_ERRORS as exc:
        raise LinkBroken(exc or type(exc).__name__) from exc
    await _end(links, stream)
    return sent


async def receive_file(links: PeerLinks, stream: trio.abc.Stream, path: Path) -> int:
    """Receive a file as ``path`` (complete and synced, or not at all); its size."""
    new = path.with_name(f"{path.name}.new")
    received = 0
    try:
        async with await trio.open_file(new, "wb") as f:
            while chunk := await links.receive_chunk(stream):
                try:
                    await f.write(chunk)
                except OSError:
                    await _drain(links, stream)  # the sender gets to hear why
                    raise
                received += len(chunk)
            await f.flush()
            await trio.to_thread.run_sync(os.fsync, f.fileno())
        await trio.to_thread.run_sync(new.rename, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            new.unlink()
        if isinstance(exc, PeerLinkError | trio.BrokenResourceError | trio.ClosedResourceError):
            raise LinkBroken(exc or type(exc).__name__) from exc
        if isinstance(exc, OSError):
            raise RelayError(f"cannot write {path.name}: {exc}") from exc
        raise
    return received


def _relay_error(reason: BaseException) -> RelayError:
    if isinstance(reason, RelayError):
        return reason
    error = RelayError(str(reason))
    error.__cause__ = reason
    return error


async def _drain(links: PeerLinks, stream: trio.abc.Stream) -> None:
    """Read the rest of a data stream and drop it: the link stays usable for an answer."""
    with contextlib.suppress(*_LINK_ERRORS):
        while await links.receive_chunk(stream):
            pass


async def _end(links: PeerLinks, stream: trio.abc.Stream) -> None:
    try:
        await links.send_chunk(stream, b"")
    except _LINK_ERRORS as exc:
        raise LinkBroken(exc or type(exc).__name__) from exc
