"""Throwaway networks of Linux network namespaces, for tests that need NAT and firewalls.

A :class:`Network` creates namespaces named ``vio<pid>x<n>-<name>`` and joins them with veth
pairs whose two ends are created inside namespaces (never in the host's own), gives them
made-up addresses (``10.99.x.x``, ``203.0.113.x``, ... exist only in there), routes, NAT and
filtering with nftables, and runs processes in them with ``ip netns exec``. None of them is
connected to the host's network, so no packet can leave them.

Leaving the ``with`` block, on success or failure, stops every process in those namespaces by
its pid (``ip netns pids``: they can only be processes started in them), then deletes the
namespaces, which removes their interfaces.

Needs root, iproute2 and nftables; :func:`unavailable` says why a test cannot run.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

STOP_SECONDS = 5.0
"""How long a process in a namespace gets after SIGTERM before SIGKILL."""
PROBE_SECONDS = 1.0
"""How long one TCP connection attempt of :meth:`Namespace.wait_for_tcp` may take."""
POLL_SECONDS = 0.05
"""Pause between two looks at something that is not ready yet."""

_counter = itertools.count()


def unavailable() -> str | None:
    """Why namespaces cannot be built here, or ``None`` when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (iproute2, nftables)"
    return None


def _run(args: Sequence[str], *, input: str | None = None) -> None:
    result = subprocess.run(list(args), input=input, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {result.stderr.strip()}")


class Namespace:
    """One network namespace of a :class:`Network`."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Namespace({self.name!r})"

    def exec_args(self, args: Sequence[str]) -> list[str]:
        """``args`` run inside this namespace."""
        return ["ip", "netns", "exec", self.name, *args]

    def ip(self, *args: str) -> None:
        _run(["ip", "-n", self.name, *args])

    def sysctl(self, key: str, value: str) -> None:
        _run(self.exec_args(["sysctl", "-q", "-w", f"{key}={value}"]))

    def nft(self, ruleset: str) -> None:
        """Load an nftables ruleset (``nft -f`` syntax) into this namespace."""
        _run(self.exec_args(["nft", "-f", "-"]), input=ruleset)

    def run(self, args: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.exec_args(args), text=True, **kwargs)

    def popen(self, args: Sequence[str], **kwargs: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(self.exec_args(args), text=True, **kwargs)

    # --- routing, NAT, filtering --------------------------------------------------------------

    def default_route(self, via: str) -> None:
        self.ip("route", "add", "default", "via", via)

    def forward(self) -> None:
        """Route between this namespace's interfaces (a router)."""
        self.sysctl("net.ipv4.ip_forward", "1")

    def masquerade(self, out_interface: str) -> None:
        """A home router: everything leaving by ``out_interface`` takes its address."""
        self.nft(f"""
            table ip vio_nat {{
              chain postrouting {{
                type nat hook postrouting priority srcnat;
                oifname "{out_interface}" masquerade
              }}
            }}""")

    def one_to_one_nat(self, public: str, private: str, out_interface: str) -> None:
        """A cloud's 1:1 NAT: ``public`` (held by this namespace) is ``private`` behind it.

        With hairpinning, as clouds do it: ``private`` reaching ``public`` comes back to
        itself, from this namespace's address.
        """
        self.nft(f"""
            table ip vio_nat {{
              chain prerouting {{
                type nat hook prerouting priority dstnat;
                ip daddr {public} dnat to {private}
              }}
              chain output {{
                type nat hook output priority -100;
                ip daddr {public} dnat to {private}
              }}
              chain postrouting {{
                type nat hook postrouting priority srcnat;
                ip saddr {private} oifname "{out_interface}" snat to {public}
                ip saddr {private} ip daddr {private} masquerade
              }}
            }}""")

    def filter(self, hook: str, rules: Iterable[str], *, policy: str = "accept") -> None:
        """An nftables ``filter`` chain on ``hook`` (input, forward, output) with ``rules``."""
        body = "\n".join(f"    {rule}" for rule in rules)
        self.nft(f"""
            table inet vio_filter_{hook} {{
              chain {hook} {{
                type filter hook {hook} priority filter; policy {policy};
            {body}
              }}
            }}""")

    def wait_for_tcp(self, host: str, port: int, within: float) -> None:
        """Return once ``host:port`` accepts a TCP connection from inside this namespace."""
        probe = (
            "import socket, sys, time\n"
            "deadline = time.monotonic() + float(sys.argv[3])\n"
            "while True:\n"
            "    try:\n"
            "        socket.create_connection((sys.argv[1], int(sys.argv[2])),\n"
            "                                 float(sys.argv[4])).close()\n"
            "        break\n"
            "    except OSError:\n"
            "        if time.monotonic() > deadline:\n"
            "            sys.exit(1)\n"
            "        time.sleep(float(sys.argv[5]))\n"
        )
        result = self.run([sys.executable, "-c", probe, host, str(port), str(within),
                           str(PROBE_SECONDS), str(POLL_SECONDS)])
        if result.returncode != 0:
            raise TimeoutError(f"{host}:{port} did not accept connections in {self.name}")


class Network:
    """Namespaces, links and processes that all go away at the end of the ``with`` block."""

    def __init__(self) -> None:
        self.prefix = f"vio{os.getpid()}x{next(_counter)}"
        self.namespaces: list[Namespace] = []

    def __enter__(self) -> Network:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def namespace(self, name: str) -> Namespace:
        """A new namespace with ``lo`` up, IPv6 off and no other interface."""
        ns = Namespace(f"{self.prefix}-{name}")
        _run(["ip", "netns", "add", ns.name])
        self.namespaces.append(ns)
        ns.ip("link", "set", "lo", "up")
        for scope in ("all", "default"):
            ns.sysctl(f"net.ipv6.conf.{scope}.disable_ipv6", "1")
        return ns

    def link(
        self,
        a: Namespace,
        a_interface: str,
        a_address: str | None,
        b: Namespace,
        b_interface: str,
        b_address: str | None,
    ) -> None:
        """A veth pair from ``a`` to ``b``, with addresses (CIDR) on the ends that have one."""
        a.ip("link", "add", a_interface, "type", "veth", "peer", "name", b_interface,
             "netns", b.name)
        for ns, interface, address in ((a, a_interface, a_address), (b, b_interface, b_address)):
            if address is not None:
                ns.ip("addr", "add", address, "dev", interface)
            ns.ip("link", "set", interface, "up")

    def bridge(self, ns: Namespace, name: str, members: Iterable[str]) -> None:
        """A bridge in ``ns`` joining its interfaces ``members`` (a shared segment)."""
        ns.ip("link", "add", name, "type", "bridge")
        for member in members:
            ns.ip("link", "set", member, "master", name)
        ns.ip("link", "set", name, "up")

    def close(self) -> None:
        """Stop every process in the namespaces, then delete them. Idempotent."""
        namespaces, self.namespaces = self.namespaces, []
        for ns in namespaces:
            _stop_processes(ns)
        for ns in namespaces:
            subprocess.run(["ip", "netns", "del", ns.name], capture_output=True)

    def __contains__(self, name: object) -> bool:
        return any(ns.name == name for ns in self.namespaces)


def _pids(ns: Namespace) -> list[int]:
    result = subprocess.run(["ip", "netns", "pids", ns.name], capture_output=True, text=True)
    return [int(pid) for pid in result.stdout.split() if pid.isdigit()]


def _stop_processes(ns: Namespace) -> None:
    pids = _pids(ns)
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_SECONDS
    while _pids(ns) and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
    for pid in _pids(ns):
        _signal(pid, signal.SIGKILL)


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def namespace_files() -> set[str]:
    """Names of every network namespace that ``ip netns`` knows (to check teardown)."""
    path = Path("/run/netns")
    return {entry.name for entry in path.iterdir()} if path.exists() else set()
