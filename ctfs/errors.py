"""The one error type handlers raise, and its errno.

Every refusal carries an errno (what the caller's syscall returns) and a human
sentence (what goes to the container's ``events`` and the daemon log).  The FUSE
layer turns it into ``FUSEError`` at a single boundary (``ctfs.fs``).
"""

from __future__ import annotations

import errno


class CtfsError(Exception):
    """A refused or failed request: ``errno_value`` for the caller, ``sentence`` for people."""

    def __init__(self, errno_value: int, sentence: str) -> None:
        super().__init__(sentence)
        self.errno_value = errno_value
        self.sentence = sentence
        # Set once the sentence reached a container's events (and so the daemon log).
        self.recorded = False

    def __str__(self) -> str:
        return self.sentence


def invalid(sentence: str) -> CtfsError:
    return CtfsError(errno.EINVAL, sentence)


def out_of_range(sentence: str) -> CtfsError:
    return CtfsError(errno.ERANGE, sentence)


def busy(sentence: str) -> CtfsError:
    return CtfsError(errno.EBUSY, sentence)


def not_permitted(sentence: str) -> CtfsError:
    return CtfsError(errno.EPERM, sentence)


def not_found(sentence: str) -> CtfsError:
    return CtfsError(errno.ENOENT, sentence)


def kernel_failed(sentence: str) -> CtfsError:
    return CtfsError(errno.EIO, sentence)
