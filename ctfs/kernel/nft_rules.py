"""numiptent: how many packet filter rules a container's network namespace holds.

iptables on these machines is iptables-nft, so every rule, whether made by iptables
or nft, is an nftables rule; one NFT_MSG_GETRULE dump counts them all.

The dump is a dozen lines of plain netlink rather than pyroute2's NFTables, which
decodes every rule: 0.5 ms against 0.04 ms per container, and the beancounters of a
thousand containers must be read in well under a second.
"""

from __future__ import annotations

import os
import socket
import struct

from ctfs.kernel import netns

_NETLINK_NETFILTER = 12
_NFNL_SUBSYS_NFTABLES = 10
_NFT_MSG_NEWRULE = 6
_NFT_MSG_GETRULE = 7
_NLM_F_REQUEST_DUMP = 0x1 | 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port
_NFGENMSG = struct.pack("BBH", socket.AF_UNSPEC, 0, 0)  # family, version, resource id


def count(pid: int) -> int:
    """The number of nftables rules in the network namespace of process ``pid``."""
    with netns.entered(pid):
        sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, _NETLINK_NETFILTER
        )
    with sock:
        request_type = (_NFNL_SUBSYS_NFTABLES << 8) | _NFT_MSG_GETRULE
        header = _HEADER.pack(
            _HEADER.size + len(_NFGENMSG), request_type, _NLM_F_REQUEST_DUMP, 1, 0
        )
        sock.send(header + _NFGENMSG)
        return _count_replies(sock)


def _count_replies(sock: socket.socket) -> int:
    rule_type = (_NFNL_SUBSYS_NFTABLES << 8) | _NFT_MSG_NEWRULE
    count = 0
    while True:
        data = sock.recv(1 << 16)
        if not data:
            return count
        offset = 0
        while offset + _HEADER.size <= len(data):
            length, kind, _, _, _ = _HEADER.unpack_from(data, offset)
            if kind == _NLMSG_DONE:
                return count
            if kind == _NLMSG_ERROR:
                (error,) = struct.unpack_from("=i", data, offset + _HEADER.size)
                if error:
                    raise OSError(-error, os.strerror(-error))
                return count
            if kind == rule_type:
                count += 1
            offset += (length + 3) & ~3
