"""A real HTTP audio stream for tests: an Icecast-like server that plays one encoded file on air.

The server keeps a live clock: a listener who connects hears the programme from the current moment on,
paced at `speed` times real time, and the programme loops. `?drop=S` closes the first connection to
that URL after S seconds; `?stall=S` stops sending on the first connection after S seconds and holds
the socket open, as a stalled encoder does. Later connections to the same URL play normally, and with
`?burst=S` they start S seconds before the live position, sent at once (Icecast's burst-on-connect).
"""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from monitor.bench.servers import LoopbackHttpServer

CHUNK_SECONDS = 0.1


def encode_mp3(source: Path, target: Path, kbps: int = 64) -> Path:
    """A constant-bitrate MP3, so bytes map linearly to air time."""
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(source), "-ac", "1", "-ar", "22050",
         "-c:a", "libmp3lame", "-b:a", f"{kbps}k", str(target)],
        check=True,
    )
    return target


class LiveAudioServer(LoopbackHttpServer):
    def __init__(self, audio: bytes, seconds: float, speed: float = 1.0):
        self.audio, self.byte_rate = audio, len(audio) / seconds * speed
        self.started = time.monotonic()
        self.connections: Counter[str] = Counter()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                url = urlparse(self.path)
                query = {k: float(v[0]) for k, v in parse_qs(url.query).items()}
                server.connections[url.path] += 1
                first = server.connections[url.path] == 1
                self.send_response(200)
                self.send_header("Content-Type", "audio/mpeg")
                self.send_header("icy-name", "airtrace test stream")
                self.end_headers()
                server.play(self.wfile, query.get("drop") if first else None, query.get("stall") if first else None,
                            0.0 if first else query.get("burst", 0.0))

        super().__init__(Handler)

    def url(self, name: str = "live.mp3", **query: float) -> str:
        suffix = "&".join(f"{k}={v}" for k, v in query.items())
        return f"http://127.0.0.1:{self.port}/{name}" + (f"?{suffix}" if suffix else "")

    def play(self, out, drop: float | None, stall: float | None, burst: float = 0.0) -> None:
        """Send the programme from the live position (less `burst` seconds, sent at once) at the byte rate
        until the listener goes away."""
        position = int((time.monotonic() - self.started - burst) * self.byte_rate) % len(self.audio)
        chunk = max(1, int(self.byte_rate * CHUNK_SECONDS))
        begun = time.monotonic()
        sent = 0
        try:
            while not self.release.is_set():
                elapsed = time.monotonic() - begun
                if drop is not None and elapsed >= drop:
                    return
                if stall is not None and elapsed >= stall:
                    self.release.wait()
                    return
                data = self.audio[position : position + chunk] or self.audio[:chunk]
                position = (position + len(data)) % len(self.audio)
                out.write(data)
                out.flush()
                sent += len(data)
                ahead = begun + sent / self.byte_rate - burst - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
        except (BrokenPipeError, ConnectionResetError):
            return

