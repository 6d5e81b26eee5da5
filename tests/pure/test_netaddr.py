"""Parsing and rendering of addresses, name servers, /etc/hosts and the nft ruleset."""

from __future__ import annotations

import errno
import ipaddress

import pytest

from ctfs.errors import CtfsError
from ctfs.kernel.source_filter import antispoof_ruleset, element_changes
from ctfs.policy import netaddr

A = ipaddress.ip_address("198.19.0.10")
B = ipaddress.ip_address("2001:db8::10")


def test_full_prefix_is_accepted_as_the_address() -> None:
    assert netaddr.parse_address("198.19.0.10/32") == A
    assert netaddr.parse_address("2001:db8::10/128") == B


def test_ipv4_mapped_ipv6_address_is_refused() -> None:
    with pytest.raises(CtfsError) as caught:
        netaddr.parse_address("::ffff:198.19.0.10")
    assert caught.value.errno_value == errno.EINVAL


def test_plus_minus_and_list_commands() -> None:
    assert netaddr.apply_ip_command("+2001:db8::10", [A]) == [A, B]
    assert netaddr.apply_ip_command("-198.19.0.10", [A, B]) == [B]
    assert netaddr.apply_ip_command("2001:db8::10  198.19.0.10", []) == [B, A]
    assert netaddr.apply_ip_command("", [A]) == []


def test_setting_round_trips_in_order() -> None:
    assert netaddr.from_setting(netaddr.to_setting([B, A])) == [B, A]


def test_main_address_prefers_ipv4() -> None:
    assert netaddr.main_address([B, A]) == A
    assert netaddr.main_address([B]) == B
    assert netaddr.main_address([]) is None


def test_hosts_line_is_replaced_and_other_lines_kept() -> None:
    old = "127.0.0.1 localhost\n198.19.7.7 db\n198.19.0.9\told\t# ctfs\n"
    new = netaddr.render_hosts(old, "web1.example.com", A)
    assert new == (
        "127.0.0.1 localhost\n198.19.7.7 db\n198.19.0.10\tweb1.example.com web1\t# ctfs\n"
    )


def test_hosts_without_address_uses_127_0_1_1_and_adds_localhost() -> None:
    new = netaddr.render_hosts("", "ct101", None)
    assert new.splitlines()[0] == "127.0.0.1\tlocalhost"
    assert new.splitlines()[-1] == "127.0.1.1\tct101\t# ctfs"


def test_resolv_conf_keeps_search_and_options() -> None:
    old = "search example.com\nnameserver 192.0.2.1\noptions ndots:2\n"
    new = netaddr.render_resolv_conf(old, ["198.19.0.53"])
    assert new == "search example.com\noptions ndots:2\nnameserver 198.19.0.53\n"


def test_nameservers_parse_inherit_list_and_empty() -> None:
    assert netaddr.parse_nameservers("inherit") == "inherit"
    assert netaddr.parse_nameservers("198.19.0.53  2001:db8::53") == "198.19.0.53 2001:db8::53"
    assert netaddr.parse_nameservers("") == ""


def test_host_resolv_conf_servers_are_read_in_order() -> None:
    text = "# x\nnameserver 192.0.2.1\nnameserver fe80::1%eth0\nnameserver bogus\n"
    assert netaddr.nameservers_of_resolv_conf(text) == ["192.0.2.1", "fe80::1"]


def test_antispoof_ruleset_lists_each_containers_addresses_by_family() -> None:
    script = antispoof_ruleset({101: (A, B), 102: ()})
    assert 'elements = { "ctfs101" . 198.19.0.10 }' in script
    assert 'elements = { "ctfs101" . 2001:db8::10 }' in script
    assert "ctfs102" not in script
    assert script.startswith("add table inet ctfs\ndelete table inet ctfs\n")


def test_element_changes_add_and_delete_by_family() -> None:
    script = element_changes(101, [A], [B])
    assert script == (
        'add element inet ctfs allowed4 { "ctfs101" . 198.19.0.10 }\n'
        'delete element inet ctfs allowed6 { "ctfs101" . 2001:db8::10 }\n'
    )
    assert element_changes(101, [], []) == ""
