"""The FUSE layer: inode table, dispatch to the declared tree, the errno boundary."""

from ctfs.fs.operations import CtfsOperations

__all__ = ["CtfsOperations"]
