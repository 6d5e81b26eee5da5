"""A container's addresses and name servers: the verbs behind ``ip`` and ``nameserver``."""

from __future__ import annotations

import trio

from ctfs.model import settings
from ctfs.model.container import Container
from ctfs.policy import netaddr


async def set_addresses(ct: Container, text: str) -> None:
    """Carry out a write to ``ip`` (see ``netaddr.apply_ip_command``).

    An address may belong to one container only, and never be the host's own.
    """
    ct.refuse_while_changing()
    async with ct.ctx.address_lock:
        current = ct.addresses
        wanted = netaddr.apply_ip_command(text, current)
        added = [a for a in wanted if a not in current]
        removed = [a for a in current if a not in wanted]
        for address in added:
            owner = ct.ctx.address_owner(address)
            if owner is not None and owner != ct.ctid:
                raise netaddr.address_in_use(address, f"container {owner}")
        if added:
            own = await trio.to_thread.run_sync(ct.backends.network.host_addresses)
            for address in added:
                if address in own:
                    raise netaddr.address_in_use(address, "the host itself")
        changes = [f"+{a}" for a in added] + [f"-{a}" for a in removed]
        await settings.update(
            ct, {"IP_ADDRESS": netaddr.to_setting(wanted)}, f"ip: {' '.join(changes)}"
        )


async def set_nameservers(ct: Container, value: str) -> None:
    await settings.update(ct, {"NAMESERVER": value}, f"nameserver: {value or '(none)'}")


async def set_hostname(ct: Container, name: str) -> None:
    await settings.update(ct, {"HOSTNAME": name}, f"hostname: {ct.hostname} -> {name}")
