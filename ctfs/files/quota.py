"""The ``quota`` file: OpenVZ's first-level disk quota, diskspace and diskinodes.

Read, one line each: the name, usage, soft limit, hard limit; diskspace in 1K
blocks, diskinodes in inodes, 9223372036854775807 for unlimited::

    diskspace 10240 10485760 11534336
    diskinodes 312 200000 220000

Write ``diskspace SOFT:HARD`` and/or ``diskinodes SOFT:HARD`` (vzctl's value
syntax, see ``ctfs.policy.sizes``), one per line; every line is applied or none.

Who enforces what:
- diskspace usage is the btrfs qgroup's *referenced* bytes of the private area:
  every extent its files use, shared with the template or not.  That is what the
  container sees of its own files, and it is what the qgroup limit counts.
- the diskspace hard limit is that qgroup's referenced limit, so btrfs itself
  refuses writes past it with EDQUOT.  It lives on the subvolume, so it holds
  whether the container runs or not, and is shown as the kernel has it.
- the diskspace soft limit and both diskinodes limits are reported only (btrfs
  has neither soft nor inode limits); inodes are counted by walking the private
  area at each read.  Usage found above a limit is noted in ``events`` once per
  crossing, and once more when it is back within.
"""

from __future__ import annotations

from ctfs.files.nodes import ControlFile
from ctfs.model import resources
from ctfs.model.caller import Caller
from ctfs.model.container import Container
from ctfs.policy.quota import INODES, SPACE, parse_command


async def _quota(ct: Container, caller: Caller) -> str:
    figures = await resources.quota_usage(ct)
    return "".join(f"{r.name} {' '.join(map(str, figures[r.name]))}\n" for r in (SPACE, INODES))


async def _set_quota(ct: Container, text: str, caller: Caller) -> None:
    await resources.set_quota(ct, parse_command(text))


FILES = (ControlFile("quota", _quota, _set_quota),)
