"""The server's listening socket, with a bounded send buffer for every connection it accepts.

Linux grows a connection's send buffer up to megabytes on its own; a client that stops reading
(a laptop asleep with the socket open) would then soak up minutes of signaling before a send
ever blocks, and the send deadline (``VIO_WS_SEND_TIMEOUT_SECONDS``) would never apply. A
buffer size set on the listening socket is inherited by each accepted connection and turns the
growing off, so a stalled client is found out within that deadline.
"""

from __future__ import annotations

import socket


def listening_socket(host: str, port: int, send_buffer_bytes: int, *,
                     reuse_port: bool = False) -> socket.socket:
    """A bound, listening TCP socket for ``host:port`` (port 0: any free port); with
    ``reuse_port`` several processes listen on one port and share its connections."""
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(info[0], socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer_bytes)
    sock.bind(info[4])
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock
