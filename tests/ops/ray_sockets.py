"""Which addresses the processes of this test's Ray cluster listen on (psutil; Linux and macOS)."""

from __future__ import annotations

import ipaddress


def is_loopback(ip: str) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback (``::ffff:127.0.0.1``); False for wildcards."""
    address = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def listening_sockets() -> list[tuple[int, str, str, int]]:
    """``(pid, process name, ip, port)`` of every TCP listener of this process and its descendants.

    A local Ray cluster's GCS, raylet, dashboard agent, runtime-env agent, Serve proxy and replicas are all
    started by the driver (this process), so they are its descendants.
    """
    import psutil

    me = psutil.Process()
    found = []
    for process in [me, *me.children(recursive=True)]:
        try:
            connections = process.net_connections(kind="tcp")
            name = process.name()
        except psutil.Error:  # exited between the listing and now
            continue
        for conn in connections:
            if conn.status == psutil.CONN_LISTEN:
                found.append((process.pid, name, conn.laddr.ip, conn.laddr.port))
    return found
