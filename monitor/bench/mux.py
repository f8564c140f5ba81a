"""`airtrace bench mux`: ingest CPU per program of TV multiplexes, in CPU seconds (not wall time).

Builds a transport stream of N programs from the demo music (each program an MP2 stereo main mix and an
audio description track, and every third program an AC-3 5.1 mix instead, as on DVB), then reads it as
M multiplexes at once through the readers `ingest` starts (demux, decode the chosen track, resample,
downmix, cut windows), as fast as they decode, and reports the process CPU time per program per second of
audio. Many multiplexes at once show what the readers' decode turns save: without them, readers decoding
side by side hand Python's interpreter lock to each other thousands of times a second.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path

from monitor.options import IngestOptions
from monitor.records import AudioWindow
from monitor.stages.ingest import start_readers
from monitor.stages.mux import MuxSource
from monitor.stages.windows import WindowGrid

MUSIC = Path(__file__).parents[1] / "demo" / "music"
SECONDS = 50.0  # the length of the demo excerpts


def build_multiplex(path: Path, programs: int) -> Path:
    """N programs over the six demo excerpts, each with a main mix and a description track."""
    tracks = sorted(MUSIC.glob("*.opus"))
    args = [arg for track in tracks for arg in ("-i", str(track))]
    graph, maps, codecs, meta = [], [], [], []
    for p in range(programs):
        main, other = p % len(tracks), (p + 1) % len(tracks)
        out = 2 * p
        if p % 3 == 2:
            graph.append(f"[{main}:a]asplit=6[m{p}a][m{p}b][m{p}c][m{p}d][m{p}e][m{p}f];"
                         f"[m{p}a][m{p}b][m{p}c][m{p}d][m{p}e][m{p}f]join=inputs=6:channel_layout=5.1(side)[s{p}]")
            maps += ["-map", f"[s{p}]"]
            codecs += [f"-c:a:{out}", "ac3", f"-b:a:{out}", "384k"]
        else:
            graph.append(f"[{main}:a]aformat=channel_layouts=stereo[s{p}]")
            maps += ["-map", f"[s{p}]"]
            codecs += [f"-c:a:{out}", "mp2", f"-b:a:{out}", "192k"]
        maps += ["-map", f"{other}:a"]
        codecs += [f"-c:a:{out + 1}", "mp2", f"-b:a:{out + 1}", "64k"]
        meta += [f"-disposition:a:{out + 1}", "visual_impaired", "-program", f"program_num={101 + p}:title=Channel {p + 1}:st={out}:st={out + 1}"]
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *args, "-filter_complex", ";".join(graph), *maps, *codecs,
                    "-ar", "48000", *meta, "-f", "mpegts", str(path)], check=True)
    return path


def run_mux(programs: int, sample_rate: int, window: int, hop: int, out: str | None, echo=print,
            multiplexes: int = 1, decode_turns: int = IngestOptions.decode_turns) -> dict:
    """Read `multiplexes` copies of one multiplex at once, each in its reader thread, with `decode_turns`."""
    grid = WindowGrid(sample_rate, window, hop)
    with tempfile.TemporaryDirectory() as directory:
        path = build_multiplex(Path(directory) / "mux.ts", programs)
        size = path.stat().st_size
        sources = [MuxSource(f"mux{m}", str(path)) for m in range(multiplexes)]
        is_window: list[bool] = []  # what each reader handed over; list.append is atomic, and no window is kept
        began_cpu, began_wall = time.process_time(), time.perf_counter()
        for reader in start_readers(sources, grid, lambda item: is_window.append(isinstance(item, AudioWindow)),
                                    IngestOptions(decode_turns=decode_turns)):
            reader.join()
        cpu, wall = time.process_time() - began_cpu, time.perf_counter() - began_wall
    audio_seconds = multiplexes * programs * SECONDS
    result = {
        "programs": programs, "multiplexes": multiplexes, "decode_turns": decode_turns,
        "multiplex_mbit_per_s": round(size * 8 / SECONDS / 1e6, 2), "windows": sum(is_window),
        "cpu_seconds": round(cpu, 3), "wall_seconds": round(wall, 3),
        "cpu_per_program_percent_of_a_core": round(100 * cpu / audio_seconds, 3),
        "programs_per_core": round(audio_seconds / cpu, 1),
    }
    echo(f"{multiplexes} x {programs} programs ({result['multiplex_mbit_per_s']} Mbit/s a multiplex), {SECONDS:.0f} s each, "
         f"decode turns {decode_turns or 'as many as the cores'}: {cpu:.2f} CPU s in all, "
         f"{result['cpu_per_program_percent_of_a_core']:.2f} % of a core per program in real time "
         f"(one core ingests {result['programs_per_core']:.0f} such programs)")
    if out:
        Path(out).write_text(json.dumps(result, indent=2))
    return result
