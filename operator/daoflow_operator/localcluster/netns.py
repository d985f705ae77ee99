"""TCP relays between the host's loopback and the real node's network namespace.

The node (kubelet, containerd, pods) lives in a network namespace of its own, so the
host's interfaces, routes, iptables and ip_forward are never touched. Three kinds of
traffic still have to cross, and each crosses through a socket that this process opens
on one side and a connection it makes on the other:

- `into_node`: a listener inside the node's namespace (e.g. 10.88.0.1:5432 for pods,
  127.0.0.1:6443 for the kubelet) whose connections are relayed to the same port on the
  host's loopback, where the API server, the S3 server or PostgreSQL listen.
- `ConnectProxy`: a Unix socket that speaks HTTP CONNECT, for the API server's egress
  selector. The API server reaches the kubelet (logs, exec) through it, and the dial is
  made from inside the node's namespace. Only addresses of that namespace are reachable.

A thread switches its network namespace with setns(2), which affects that thread alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import threading

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL("libc.so.6", use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def in_netns(netns_fd: int, fn):
    """Runs fn() with the calling context moved into a network namespace, on a fresh thread."""
    result: dict = {}

    def body():
        try:
            _setns(netns_fd)
            result["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            result["error"] = exc

    t = threading.Thread(target=body, daemon=True)
    t.start()
    t.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(1 << 16)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def _splice(a: socket.socket, b: socket.socket) -> None:
    t = threading.Thread(target=_pipe, args=(b, a), daemon=True)
    t.start()
    _pipe(a, b)
    t.join()
    a.close()
    b.close()


class Relays:
    """The relays of one node; `close()` stops accepting and closes every listener."""

    def __init__(self, netns_fd: int):
        self.netns_fd = netns_fd
        self._listeners: list[socket.socket] = []
        self._closed = threading.Event()

    def _serve(self, listener: socket.socket, connect) -> None:
        def accept_loop():
            while not self._closed.is_set():
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                threading.Thread(target=self._handle, args=(conn, connect), daemon=True).start()

        threading.Thread(target=accept_loop, daemon=True).start()

    @staticmethod
    def _handle(conn: socket.socket, connect) -> None:
        try:
            upstream = connect(conn)
        except OSError:
            conn.close()
            return
        if upstream is not None:
            _splice(conn, upstream)

    def into_node(self, address: str, port: int, host_port: int | None = None) -> None:
        """Listen on address:port inside the node; relay to 127.0.0.1:host_port on the host."""
        def listen():
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((address, port))
            s.listen(64)
            return s

        listener = in_netns(self.netns_fd, listen)
        self._listeners.append(listener)
        target = host_port or port

        def dial(_conn: socket.socket) -> socket.socket:
            upstream = socket.create_connection(("127.0.0.1", target), timeout=10)
            upstream.settimeout(None)
            return upstream

        self._serve(listener, dial)

    def connect_proxy(self, path: str) -> None:
        """An HTTP CONNECT proxy on a Unix socket; its dials are made inside the node."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        os.chmod(path, 0o600)
        listener.listen(64)
        self._listeners.append(listener)

        def dial(conn: socket.socket):
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk or len(head) > 16384:
                    raise OSError("bad CONNECT request")
                head += chunk
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1").split()
            if len(request_line) < 2 or request_line[0] != "CONNECT":
                conn.sendall(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
                raise OSError("not a CONNECT request")
            host, _, port = request_line[1].rpartition(":")
            try:
                upstream = in_netns(self.netns_fd, lambda: socket.create_connection((host.strip("[]"), int(port)),
                                                                                     timeout=10))
            except (OSError, ValueError) as exc:
                conn.sendall(f"HTTP/1.1 502 Bad Gateway\r\n\r\n{exc}".encode())
                raise OSError(str(exc)) from exc
            upstream.settimeout(None)
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            extra = head.split(b"\r\n\r\n", 1)[1]
            if extra:
                upstream.sendall(extra)
            return upstream

        self._serve(listener, dial)

    def close(self) -> None:
        self._closed.set()
        for listener in self._listeners:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        self._listeners.clear()
