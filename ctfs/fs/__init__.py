"""The FUSE layer: ctfs's own session on /dev/fuse (``session``, ``wire``), the inode
table and dispatch to the declared tree (``operations``), the errno boundary.

Nothing is imported here, so that the keeper can use ``wire`` without the model.
"""
