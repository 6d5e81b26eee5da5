"""The one errno boundary every FUSE operation passes through.

``CtfsError`` becomes its errno (its sentence logged, unless it was already
recorded in a container's ``events``, which also reach the log), ``FUSEError``
passes, and anything else is logged with the operation and becomes EIO, so one
bug never takes the mount down.
"""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ctfs.errors import CtfsError
from ctfs.fs import wire
from ctfs.fs.places import Place

log = logging.getLogger("ctfs.fs")

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def boundary(op: F) -> F:
    @functools.wraps(op)
    async def wrapper(self: Any, *args: Any) -> Any:
        try:
            return await op(self, *args)
        except wire.FUSEError:
            raise
        except CtfsError as exc:
            if not exc.recorded:
                log.info(
                    "%s: %s (%s)",
                    op.__name__,
                    exc.sentence,
                    errno.errorcode.get(exc.errno_value, exc.errno_value),
                )
            raise wire.FUSEError(exc.errno_value) from None
        except Exception:
            log.exception("%s%r failed", op.__name__, args[:2])
            raise wire.FUSEError(errno.EIO) from None

    return wrapper  # type: ignore[return-value]


def refusal(place: Place | None, name: str, exc: CtfsError) -> CtfsError:
    """``exc``, with its sentence in the events of the container ``place`` is in."""
    container = place.container if place is not None else None
    if container is not None:
        container.events.record(f"{name}: refused: {exc.sentence}", logging.WARNING)
        exc.recorded = True
    return exc
