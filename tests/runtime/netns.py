"""A network namespace joined to the host by a veth pair, to cut one process off the network.

The host end and the namespace end get the two usable addresses of a /30 in
10.213.0.0/16 that no interface on the host uses yet. Setting the host end
down drops every packet between them without a reset, like a pulled cable.
Creating and deleting namespaces needs root and iproute2 (`ip netns`).
"""

from __future__ import annotations

import ipaddress
import os
import random
import secrets
import shutil
import subprocess

__all__ = ["NetworkNamespace", "netns_unavailable_reason"]

_SUBNET = ipaddress.ip_network("10.213.0.0/16")
_COMMAND_TIMEOUT_S = 30.0


def netns_unavailable_reason() -> str:
    """Return why this process cannot create network namespaces, or an empty string if it can."""
    if os.geteuid() != 0:
        return "creating a network namespace needs root"
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is not installed"
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=_COMMAND_TIMEOUT_S)
    if listed.returncode != 0:
        return f"`ip netns` is not available: {listed.stderr.strip()}"
    return ""


def _ip(*arguments: str) -> None:
    completed = subprocess.run(["ip", *arguments], capture_output=True, text=True, timeout=_COMMAND_TIMEOUT_S)
    if completed.returncode != 0:
        raise RuntimeError(f"ip {' '.join(arguments)} failed: {completed.stderr.strip()}")


def _used_addresses() -> set[ipaddress.IPv4Address]:
    listed = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, timeout=_COMMAND_TIMEOUT_S)
    used = set()
    for line in listed.stdout.splitlines():
        fields = line.split()
        if "inet" in fields:
            used.add(ipaddress.ip_interface(fields[fields.index("inet") + 1]).ip)
    return used


class NetworkNamespace:
    """A namespace `mpnn-<hex>` with a veth pair to the host; `delete` removes both."""

    def __init__(self) -> None:
        suffix = secrets.token_hex(4)
        self.name = f"mpnn-{suffix}"
        # Interface names are limited to 15 characters.
        self.host_interface = f"mh{suffix}"
        self.namespace_interface = f"mn{suffix}"
        self.host_address, self.namespace_address = self._free_pair()
        self._created: list[str] = []

    def __repr__(self) -> str:
        return f"<NetworkNamespace {self.name} host={self.host_address} namespace={self.namespace_address}>"

    @staticmethod
    def _free_pair() -> tuple[str, str]:
        used = _used_addresses()
        subnets = list(_SUBNET.subnets(new_prefix=30))
        for subnet in random.sample(subnets, 64):
            host, namespace = subnet.hosts()
            if host not in used and namespace not in used:
                return str(host), str(namespace)
        raise RuntimeError(f"found no free /30 in {_SUBNET} after 64 tries")

    def create(self) -> None:
        """Create the namespace and the veth pair, and bring both ends up."""
        try:
            _ip("netns", "add", self.name)
            self._created.append("netns")
            _ip("link", "add", self.host_interface, "type", "veth", "peer", "name", self.namespace_interface)
            self._created.append("veth")
            _ip("link", "set", self.namespace_interface, "netns", self.name)
            _ip("addr", "add", f"{self.host_address}/30", "dev", self.host_interface)
            _ip("link", "set", self.host_interface, "up")
            self._in_namespace("addr", "add", f"{self.namespace_address}/30", "dev", self.namespace_interface)
            self._in_namespace("link", "set", self.namespace_interface, "up")
            self._in_namespace("link", "set", "lo", "up")
        except BaseException:
            self.delete()
            raise

    def _in_namespace(self, *arguments: str) -> None:
        _ip("netns", "exec", self.name, "ip", *arguments)

    def command(self, *arguments: str) -> list[str]:
        """Return the command line that runs `arguments` inside the namespace."""
        return ["ip", "netns", "exec", self.name, *arguments]

    def cut(self) -> None:
        """Set the host end of the veth pair down: packets in both directions are dropped."""
        _ip("link", "set", self.host_interface, "down")

    def restore(self) -> None:
        """Set the host end up again."""
        _ip("link", "set", self.host_interface, "up")

    def delete(self) -> None:
        """Delete the veth pair (both ends) and the namespace; raise if either is still there."""
        if "veth" in self._created:
            subprocess.run(["ip", "link", "del", self.host_interface], capture_output=True, timeout=_COMMAND_TIMEOUT_S)
        if "netns" in self._created:
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=_COMMAND_TIMEOUT_S)
        self._created.clear()
        left = []
        link = subprocess.run(["ip", "link", "show", self.host_interface], capture_output=True, timeout=_COMMAND_TIMEOUT_S)
        if link.returncode == 0:
            left.append(f"interface {self.host_interface}")
        namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=_COMMAND_TIMEOUT_S)
        if self.name in namespaces.stdout.split():
            left.append(f"namespace {self.name}")
        if left:
            raise RuntimeError(f"could not delete {' and '.join(left)}; delete them with `ip link del` and `ip netns del`")
