"""Device access on cgroup v2: a BPF_CGROUP_DEVICE program made from an allow-list.

cgroup v2 has no devices controller; the kernel asks a BPF program attached to
the cgroup instead, for every open and mknod of a device node by a process in
it or below it.  The program is assembled here from the same rules as v1's
devices.allow ("c 1:3 rwm", "c 136:* rwm", "c *:* m"): a request is allowed if
one rule has its type, its major and minor (or "*") and every access it asks.

It is attached with BPF_F_ALLOW_MULTI: a program attached below (by a systemd
inside, were bpf(2) not refused to containers) runs as well, and every one must
allow a request, so nothing below can widen the list.  Standard library only.
"""

from __future__ import annotations

import ctypes
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_SYS_BPF = 321  # x86-64
_BPF_PROG_LOAD = 5
_BPF_PROG_ATTACH = 8
_BPF_PROG_TYPE_CGROUP_DEVICE = 15
_BPF_CGROUP_DEVICE = 6
_BPF_F_ALLOW_MULTI = 2
# struct bpf_cgroup_dev_ctx: access_type (access << 16 | type), major, minor.
_TYPES = {"b": 1, "c": 2}
_ACCESS = {"m": 1, "r": 2, "w": 4}
ANY = -1

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


@dataclass(frozen=True)
class Rule:
    """One allow rule: device type (1 block, 2 char, ANY), major, minor, access mask."""

    kind: int
    major: int
    minor: int
    access: int


def parse_rule(text: str) -> Rule:
    """``c 1:3 rwm`` as devices.allow writes it; ValueError for anything else."""
    words = text.split()
    if len(words) != 3 or words[0] not in (*_TYPES, "a"):
        raise ValueError(f"bad device rule {text!r}")
    major, _, minor = words[1].partition(":")

    def number(word: str) -> int:
        if word == "*":
            return ANY
        if not word.isdigit():
            raise ValueError(f"bad device number in {text!r}")
        return int(word)

    if not words[2] or set(words[2]) - set(_ACCESS):
        raise ValueError(f"bad access in {text!r}")
    access = sum(_ACCESS[c] for c in set(words[2]))
    return Rule(_TYPES.get(words[0], ANY), number(major), number(minor), access)


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, dst | (src << 4), off, imm)


_LDX_W, _MOV_X, _MOV_K, _AND_K, _RSH_K, _JNE_K, _EXIT = 0x61, 0xBF, 0xB7, 0x57, 0x77, 0x55, 0x95


def assemble(rules: Iterable[Rule]) -> bytes:
    """The program: r3 = type, r4 = access, r5 = major, r6 = minor; each rule a test."""
    code = [
        _insn(_LDX_W, 2, 1, 0),  # r2 = ctx->access_type
        _insn(_MOV_X, 3, 2),
        _insn(_AND_K, 3, imm=0xFFFF),  # r3 = type
        _insn(_MOV_X, 4, 2),
        _insn(_RSH_K, 4, imm=16),  # r4 = access asked
        _insn(_LDX_W, 5, 1, 4),  # r5 = major
        _insn(_LDX_W, 6, 1, 8),  # r6 = minor
    ]
    for rule in rules:
        tests = []
        for reg, value in ((3, rule.kind), (5, rule.major), (6, rule.minor)):
            if value != ANY:
                tests.append((reg, value))
        # Each test jumps past the rest of this rule when it fails.
        body = len(tests) + 5  # the tests, then: r7 = r4; r7 &= ~access; jne; r0 = 1; exit
        for index, (reg, value) in enumerate(tests):
            code.append(_insn(_JNE_K, reg, off=body - index - 1, imm=value))
        code += [
            _insn(_MOV_X, 7, 4),
            _insn(_AND_K, 7, imm=~rule.access),  # asked for more than the rule allows?
            _insn(_JNE_K, 7, off=2, imm=0),
            _insn(_MOV_K, 0, imm=1),
            _insn(_EXIT),
        ]
    code += [_insn(_MOV_K, 0, imm=0), _insn(_EXIT)]
    return b"".join(code)


def _bpf(command: int, attr: bytes) -> int:
    buffer = ctypes.create_string_buffer(attr, 128)
    result = _libc.syscall(_SYS_BPF, command, buffer, 128)
    if result < 0:
        error = ctypes.get_errno()
        raise OSError(error, f"bpf: {os.strerror(error)}")
    return int(result)


def load(rules: Iterable[Rule]) -> int:
    """A descriptor of the loaded program for ``rules``."""
    program = assemble(rules)
    insns = ctypes.create_string_buffer(program, len(program))
    license_ = ctypes.create_string_buffer(b"GPL")
    attr = struct.pack(
        "<IIQQIIQ",
        _BPF_PROG_TYPE_CGROUP_DEVICE,
        len(program) // 8,
        ctypes.addressof(insns),
        ctypes.addressof(license_),
        0,  # log_level
        0,  # log_size
        0,  # log_buf
    )
    return _bpf(_BPF_PROG_LOAD, attr)


def attach(cgroup: Path, allowed: Iterable[str]) -> None:
    """Let processes in ``cgroup`` (and below) use only the ``allowed`` devices."""
    program = load(parse_rule(rule) for rule in allowed)
    try:
        target = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            attr = struct.pack("<IIII", target, program, _BPF_CGROUP_DEVICE, _BPF_F_ALLOW_MULTI)
            _bpf(_BPF_PROG_ATTACH, attr)
        finally:
            os.close(target)
    finally:
        os.close(program)  # the cgroup holds the program now
