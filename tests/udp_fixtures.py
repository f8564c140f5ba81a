"""A channel sent over UDP as a head-end or an off-air receiver sends it, for the UDP input tests: ffmpeg plays a
transport stream in real time to a loopback port, through a relay that can lose datagrams and stop forwarding.
Everything stays on 127.0.0.1."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from pathlib import Path

from monitor.bench.servers import HOST, free_port


def free_udp_port() -> int:
    """A loopback port free for UDP as well as TCP (free_port draws it below the ephemeral range)."""
    while True:
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                continue
            return port


def send(transport_stream: Path, port: int) -> subprocess.Popen:
    """ffmpeg sending `transport_stream` to 127.0.0.1:`port` in real time, seven TS packets a datagram, as a new
    encoder session (its timestamps start again, as every restart's do)."""
    return subprocess.Popen(["ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-i", str(transport_stream), "-map", "0", "-c", "copy",
                             "-f", "mpegts", f"udp://{HOST}:{port}?pkt_size=1316"])


class Relay:
    """Forwards datagrams from `listen_port` to `to_port` (both on 127.0.0.1), except those that arrive while
    `losing` (a burst of loss, or a receiver off the line): they are dropped, as a lossy network drops them."""

    def __init__(self, to_port: int):
        self.to_port = to_port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.sock.settimeout(0.2)
        self.listen_port = self.sock.getsockname()[1]
        self.losing = False
        self.forwarded = self.dropped = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Relay":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()

    def lose(self, seconds: float) -> None:
        """Drop every datagram for the next `seconds` (blocks for them)."""
        self.losing = True
        time.sleep(seconds)
        self.losing = False

    def _run(self) -> None:
        out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            if self.losing:
                self.dropped += 1
                continue
            try:
                out.sendto(data, (HOST, self.to_port))
                self.forwarded += 1
            except OSError:  # nobody listening yet (the reader between its two opens): lost, as on a network
                self.dropped += 1
        out.close()
