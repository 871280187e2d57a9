"""A minimal syslog receiver for the integration tests: RFC 6587 octet
counting over TCP, RFC 5424 messages kept as received."""

import json
import socket
import threading


class SyslogReceiver:
    """A minimal RFC 6587 octet-counting receiver that can be stopped and
    restarted on the same port, to make pgcloak's syslog sink fail."""

    def __init__(self, port: int):
        self.port = port
        self.messages: list[bytes] = []
        self._sock: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> "SyslogReceiver":
        self._stop.clear()
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        self.port = s.getsockname()[1]  # port 0: the kernel's choice, kept for restarts
        s.listen(16)
        s.settimeout(0.1)
        self._sock = s
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()
        return self

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        buf = b""
        conn.settimeout(0.1)
        while not self._stop.is_set():
            try:
                chunk = conn.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while b" " in buf:
                length, rest = buf.split(b" ", 1)
                n = int(length)
                if len(rest) < n:
                    break
                self.messages.append(rest[:n])
                buf = rest[n:]

    def stop(self) -> None:
        self._stop.set()
        if self._sock:
            self._sock.close()
        for c in self._conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()
        self._conns = []
        if self._thread:
            self._thread.join(timeout=5)

    def parsed(self) -> list[tuple[str, str, str]]:
        """(PRI and version, MSGID, MSG) of every message received."""
        out = []
        for m in list(self.messages):
            pri_version, _ts, _host, _app, _procid, msgid, _sd, msg = m.decode().split(" ", 7)
            out.append((pri_version, msgid, msg))
        return out

    def seqs(self) -> set[int]:
        out = set()
        for m in self.messages:
            body = m[m.index(b"{"):]
            out.add(json.loads(body)["seq"])
        return out
