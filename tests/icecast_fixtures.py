"""A real Icecast server (Debian's icecast2) on a free loopback port, with a throwaway config, and FFmpeg as its source
client playing the demo music in real time, or ezstream sending Ogg files one after another, for the live-ingest tests
(test_icecast.py)."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from monitor.bench.servers import HOST, ServerProcess, as_user, free_port, wait_until

ICECAST = shutil.which("icecast2")
EZSTREAM = shutil.which("ezstream")  # Debian's ezstream: a station's source client that sends Ogg files as they are
ICECAST_USER = "icecast2"  # icecast2 refuses to run as root: Debian's package makes this user
SOURCE_PASSWORD, ADMIN_PASSWORD = "airtrace-source", "airtrace-admin"
BITRATE_KBPS = 128
BURST_BYTES = 65536  # Icecast's default burst-on-connect: 4.1 s of 128 kb/s MP3 (16.4 s of a 32 kb/s HE-AAC station's)


def seconds_of(n_bytes: int) -> float:
    """The audio seconds in `n_bytes` of the stream (a burst's, say)."""
    return n_bytes * 8 / (BITRATE_KBPS * 1000)


BURST_SECONDS = seconds_of(BURST_BYTES)
MOUNT = "/live.mp3"
OGG_MOUNT = "/live.ogg"

EZSTREAM_CONFIG = """<ezstream>
  <servers><server><hostname>{host}</hostname><port>{port}</port><password>{source_password}</password><tls>none</tls></server></servers>
  <streams><stream><mountpoint>{mount}</mountpoint><format>Ogg</format></stream></streams>
  <intakes><intake><type>playlist</type><filename>{playlist}</filename><stream_once>yes</stream_once></intake></intakes>
</ezstream>
"""

CONFIG = """<icecast>
  <limits>
    <clients>20</clients><sources>4</sources><queue-size>524288</queue-size>
    <client-timeout>30</client-timeout><header-timeout>15</header-timeout><source-timeout>10</source-timeout>
    <burst-on-connect>1</burst-on-connect><burst-size>{burst}</burst-size>
  </limits>
  <authentication>
    <source-password>{source_password}</source-password>
    <admin-user>admin</admin-user><admin-password>{admin_password}</admin-password>
  </authentication>
  <hostname>{host}</hostname>
  <listen-socket><port>{port}</port><bind-address>{host}</bind-address></listen-socket>
  <fileserve>1</fileserve>
  <paths>
    <basedir>/usr/share/icecast2</basedir><webroot>/usr/share/icecast2/web</webroot><adminroot>/usr/share/icecast2/admin</adminroot>
    <logdir>{folder}</logdir><pidfile>{folder}/icecast.pid</pidfile>
  </paths>
  <logging><accesslog>access.log</accesslog><errorlog>error.log</errorlog><loglevel>3</loglevel></logging>
  <security><chroot>0</chroot></security>
</icecast>
"""


class Icecast:
    """icecast2 on a free loopback port (as ICECAST_USER when we are root), its config and logs in a folder of its own under
    /tmp (pytest's tmp dirs are root's alone), its logs copied to `logs` as it stops; and FFmpeg as the source client of
    MOUNT: 128 kb/s MP3 of `music`, sent in real time (`-re`)."""

    def __init__(self, music: Path, logs: Path, burst_bytes: int = BURST_BYTES) -> None:
        self.music, self.logs, self.port = music, logs, free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="airtrace-icecast-"))
        owner = as_user(ICECAST_USER)
        if owner:
            os.chown(self.folder, owner["user"], owner["group"])
        config = self.folder / "icecast.xml"
        config.write_text(CONFIG.format(burst=burst_bytes, source_password=SOURCE_PASSWORD, admin_password=ADMIN_PASSWORD,
                                        host=HOST, port=self.port, folder=self.folder))
        config.chmod(0o644)
        self.server = ServerProcess([str(ICECAST), "-c", str(config)], self.port, self.folder / "icecast.out", user=ICECAST_USER)
        self.encoder: subprocess.Popen | None = None

    def __enter__(self) -> Icecast:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_source()
        self.server.stop()
        for log in self.folder.glob("*.log"):
            shutil.copy(log, self.logs / f"icecast-{log.name}")
        shutil.rmtree(self.folder, ignore_errors=True)

    def url(self, mount: str = MOUNT) -> str:
        return f"http://{HOST}:{self.port}{mount}"

    def play(self, start: float = 0.0, wait: bool = True) -> float:
        """(Re)start the source client at `start` s into the music; the time (epoch) at which it played music second
        `start`, or later by its start-up: it plays second s at that time + s - start. With `wait`, until the mount is up."""
        started = time.time()
        self.encoder = subprocess.Popen(
            ["ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-ss", f"{start:.3f}", "-i", str(self.music), "-c:a", "libmp3lame",
             "-b:a", f"{BITRATE_KBPS}k", "-content_type", "audio/mpeg", "-ice_name", "airtrace test station", "-f", "mp3",
             f"icecast://source:{SOURCE_PASSWORD}@{HOST}:{self.port}{MOUNT}"])
        if wait:
            wait_until(lambda: self.mounted(), timeout=10.0, what=f"the source on {MOUNT}", interval=0.02)
        return started - start

    def play_ogg_files(self, files: list[Path]) -> float:
        """ezstream as the source client of OGG_MOUNT, playing `files` once, one after another, in real time, as they are
        (no encoder is configured, so nothing is re-encoded): each file begins a new chain of the Ogg stream, with its own
        headers, rate and channels, as a station's does at each track. The time (epoch) it was started: it sends the
        files' second s at about that time + s (libshout sends a page at a time, a track's first pages ahead): the time
        its mount came up, once it has."""
        playlist, config = self.folder / "playlist.m3u", self.folder / "ezstream.xml"
        playlist.write_text("".join(f"{file}\n" for file in files))
        config.write_text(EZSTREAM_CONFIG.format(host=HOST, port=self.port, source_password=SOURCE_PASSWORD, mount=OGG_MOUNT, playlist=playlist))
        config.chmod(0o600)  # it holds the source password (ezstream warns of a config that others may read)
        self.encoder = subprocess.Popen([str(EZSTREAM), "-q", "-c", str(config)], stdout=subprocess.DEVNULL)
        wait_until(lambda: self.mounted(OGG_MOUNT), timeout=10.0, what=f"the source on {OGG_MOUNT}", interval=0.02)
        return time.time()  # its start-up (about 2 s on a busy machine) is over: it sends in real time from here

    def stop_source(self) -> None:
        if self.encoder is not None and self.encoder.poll() is None:
            self.encoder.kill()
            self.encoder.wait()

    def admin(self, path: str) -> str:
        request = urllib.request.Request(f"http://{HOST}:{self.port}/admin/{path}")
        request.add_header("Authorization", "Basic " + base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode())
        with urllib.request.urlopen(request, timeout=5.0) as response:
            return response.read().decode()

    def mounted(self, mount: str = MOUNT) -> bool:
        return f'mount="{mount}"' in self.admin("listmounts")

    def listeners(self) -> list[str]:
        """The ids of the listeners of MOUNT."""
        return re.findall(r"<ID>(\d+)</ID>", self.admin(f"listclients?mount={MOUNT}"))

    def kill_listeners(self) -> None:
        """Icecast closes every listener's connection (its admin `killclient`), as a network drop does."""
        for listener in self.listeners():
            self.admin(f"killclient?mount={MOUNT}&id={listener}")

    def set_title(self, title: str) -> None:
        """The stream's title (ICY StreamTitle, sent in the metadata between a listener's audio that asked for it), as a
        station's playout system sets it for each song."""
        self.admin(f"metadata?mount={MOUNT}&mode=updinfo&song={urllib.parse.quote(title)}")
