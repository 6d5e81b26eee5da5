"""Paths of the declared tree: what a path names, and what a directory lists.

A place is a path from the top of the mount, as a tuple of names.  Resolving it
walks ``ctfs.files.TREE``; the component under ``Containers`` is a CTID, which
binds the container every node below it belongs to.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from dataclasses import dataclass

from ctfs.files import TREE, Containers, Directory, File
from ctfs.fs import wire
from ctfs.model.caller import Caller
from ctfs.model.container import Container
from ctfs.model.host import Host
from ctfs.policy.values import parse_ctid

Path = tuple[str, ...]


@dataclass(frozen=True)
class Place:
    """What a path names: a node (a directory or a file) and the container it is in."""

    node: Directory | File
    container: Container | None


def _gone() -> wire.FUSEError:
    return wire.FUSEError(errno.ENOENT)


def child(host: Host, place: Place, name: str) -> Place:
    """The place ``name`` in the directory at ``place``; FUSEError otherwise."""
    if not isinstance(place.node, Directory):
        raise wire.FUSEError(errno.ENOTDIR)
    for node in place.node.children:
        if isinstance(node, Containers):
            ctid = parse_ctid(name)
            container = host.get(ctid) if ctid is not None else None
            if container is not None and place.container is None:
                return Place(Directory(name, node.children), container)
        elif node.name == name:
            return Place(node, place.container)
    raise _gone()


def resolve(host: Host, path: Path) -> Place:
    """The place at ``path``; ENOENT when any part of it is gone."""
    place = Place(TREE, None)
    for name in path:
        place = child(host, place, name)
    return place


def listing(host: Host, place: Place) -> Iterator[tuple[str, Place]]:
    """The entries of the directory at ``place``, in a stable order."""
    assert isinstance(place.node, Directory)
    for node in place.node.children:
        if isinstance(node, Containers):
            for ctid in host.sorted_ctids():
                container = host.get(ctid)
                if container is not None:
                    yield str(ctid), Place(Directory(str(ctid), node.children), container)
        else:
            yield node.name, Place(node, place.container)


def every_path(host: Host) -> Iterator[Path]:
    """Every path of the tree as it stands, the top first."""
    stack: list[tuple[Path, Place]] = [((), Place(TREE, None))]
    while stack:
        path, place = stack.pop()
        yield path
        if isinstance(place.node, Directory):
            stack.extend(((*path, name), sub) for name, sub in listing(host, place))


def visible(path: Path, caller: Caller) -> bool:
    """Whether ``caller`` may see the place at ``path``.

    The host sees everything.  A process in a container sees its own directory and
    what is in it, and the top only to pass through it (it may not list it): no
    other container, no host file.  A caller ctfs cannot place sees
    nothing but the top.
    """
    if caller.is_host or not path:
        return True
    return caller.ctid is not None and path[0] == str(caller.ctid)
