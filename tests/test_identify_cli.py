"""`airtrace catalog ...` and `airtrace identify` through click's CliRunner, on the demo music."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from catalog_fixtures import CATALOG_TRACKS, MUSIC, SAMPLE_RATE, music
from encoders import synthesize_speech
from monitor.cli import main


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def identify(catalog: Path, *files: Path) -> list[dict]:
    code, out, err = run("identify", "--catalog", str(catalog), *map(str, files))
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines()]


def wav(path: Path, audio: np.ndarray) -> Path:
    sf.write(path, audio, SAMPLE_RATE)
    return path


def test_catalog_commands_add_list_stats_and_remove(tmp_path: Path, encoder_dir: Path) -> None:
    directory = tmp_path / "catalog"
    (tmp_path / "bad.opus").write_bytes(b"\x00" * 100)
    code, out, err = run("catalog", "add", "--catalog", str(directory), "--encoder", str(encoder_dir),
                         str(MUSIC / "area1-game.opus"), str(tmp_path / "bad.opus"))
    assert code == 0 and out.strip().endswith("added 1, skipped 1, duplicates 0")
    assert "skipped" in err and "bad.opus" in err
    code, out, err = run("catalog", "add", "--catalog", str(directory), str(MUSIC / "area1-game.opus"), str(MUSIC / "over-theme.opus"))
    assert code == 0 and out.strip().endswith("added 1, skipped 1, duplicates 0")

    code, out, _ = run("catalog", "list", "--catalog", str(directory))
    assert [line.split("\t")[0] for line in out.splitlines()] == ["area1-game", "over-theme"]
    code, out, _ = run("catalog", "stats", "--catalog", str(directory))
    stats = json.loads(out)
    assert stats["tracks"] == 2 and stats["index_factory"] == "Flat" and stats["hop_seconds"] == 0.5

    assert run("catalog", "remove", "--catalog", str(directory), "area1-game")[0] == 0
    code, _, err = run("catalog", "remove", "--catalog", str(directory), "area1-game")
    assert code != 0 and "no track 'area1-game'" in err and "Traceback" not in err
    code, _, err = run("catalog", "add", "--catalog", str(directory), "--hop", "0.25", str(MUSIC / "area2-game.opus"))
    assert code != 0 and "hop of 0.5 s" in err


def test_identify_finds_an_excerpt_where_it_is_and_nothing_elsewhere(built_catalog: Path, tmp_path: Path) -> None:
    track = CATALOG_TRACKS[1]
    excerpt = wav(tmp_path / "excerpt.wav", music(track)[SAMPLE_RATE * 17 : SAMPLE_RATE * 27])
    outsider = wav(tmp_path / "outsider.wav", music("termigator_reg-zbb")[SAMPLE_RATE * 10 : SAMPLE_RATE * 20])
    speech = wav(tmp_path / "speech.wav", synthesize_speech("This is not music, it is the news at ten o'clock, read slowly.", SAMPLE_RATE))
    noise = wav(tmp_path / "noise.wav", 0.1 * np.random.default_rng(0).standard_normal(SAMPLE_RATE * 10).astype(np.float32))
    found, *nothing = identify(built_catalog, excerpt, outsider, speech, noise)

    assert found["file"] == str(excerpt)
    match = found["matches"][0]
    assert list(match) == ["track_id", "query_start", "query_end", "ref_start", "ref_end", "speed", "score", "confidence"]
    assert match["track_id"] == track and match["speed"] == pytest.approx(1.0, abs=0.02)
    assert match["query_start"] == pytest.approx(0.0, abs=0.5) and match["query_end"] == pytest.approx(10.0, abs=0.5)
    assert match["ref_start"] == pytest.approx(17.0, abs=0.5) and match["ref_end"] == pytest.approx(27.0, abs=0.5)
    assert match["confidence"] >= 0.99
    assert [r["matches"] for r in nothing] == [[], [], []]


def test_identify_reports_a_bad_file_on_its_line_and_goes_on(built_catalog: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.mp3"
    broken.write_bytes(b"nonsense")
    short = wav(tmp_path / "short.wav", music(CATALOG_TRACKS[0])[: SAMPLE_RATE // 2])
    good = wav(tmp_path / "good.wav", music(CATALOG_TRACKS[0])[SAMPLE_RATE * 5 : SAMPLE_RATE * 12])
    lines = identify(built_catalog, broken, short, good)
    assert [line["file"] for line in lines] == [str(broken), str(short), str(good)]
    assert "broken.mp3 is not in any audio or video format FFmpeg recognises" in lines[0]["error"]
    assert "shorter than one window" in lines[1]["error"]
    assert lines[2]["matches"][0]["track_id"] == CATALOG_TRACKS[0]


def test_identify_on_an_empty_or_missing_catalog_is_a_clear_error(tmp_path: Path, encoder_dir: Path) -> None:
    code, _, err = run("identify", "--catalog", str(tmp_path / "none"), str(MUSIC / "area1-game.opus"))
    assert code != 0 and "no catalog at" in err
    empty = tmp_path / "empty"
    code, _, err = run("catalog", "add", "--catalog", str(empty), "--encoder", str(encoder_dir), str(tmp_path / "nothing.wav"))
    assert code == 1 and "nothing.wav: no such file" in err  # every input failed; the catalog exists, empty
    code, _, err = run("identify", "--catalog", str(empty), str(MUSIC / "area1-game.opus"))
    assert code != 0 and "is empty" in err and "Traceback" not in err


def test_identify_names_the_real_cause_of_unreadable_input_and_fails_when_every_file_does(built_catalog: Path, tmp_path: Path) -> None:
    import subprocess

    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp3"
    text.write_text("these are my notes, not audio\n" * 20)
    video = tmp_path / "silent-film.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=duration=1:size=64x64", "-c:v", "mpeg4", str(video)], check=True)
    unfinished = tmp_path / "unfinished.m4a"  # a recorder that writes its index (moov) last, stopped short: no index
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(MUSIC / "area1-game.opus"), "-t", "5", "-c:a", "aac", str(unfinished)], check=True)
    unfinished.write_bytes(unfinished.read_bytes()[: unfinished.read_bytes().rfind(b"moov") - 4])
    code, out, err = run("identify", "--catalog", str(built_catalog), str(empty), str(text), str(video), str(unfinished))
    errors = [json.loads(line)["error"] for line in out.splitlines()]
    assert code == 1 and "every file failed" in err
    assert "empty (0 bytes)" in errors[0]
    assert "not in any audio or video format FFmpeg recognises" in errors[1]
    assert "has no audio stream" in errors[2]
    assert "recording without its index (no moov box)" in errors[3] and "untrunc" in errors[3]  # it said "not in any ... format"
    assert not any("WAV" in e for e in errors[:3])  # the old advice named the wrong cause

    good = wav(tmp_path / "good.wav", music(CATALOG_TRACKS[0])[SAMPLE_RATE * 5 : SAMPLE_RATE * 12])
    assert run("identify", "--catalog", str(built_catalog), str(empty), str(good))[0] == 0  # one file failed, not every one


def test_identify_reads_each_audio_file_of_a_folder(built_catalog: Path, tmp_path: Path) -> None:
    """As `catalog add` reads a folder; it said "Is a directory"."""
    (tmp_path / "clips" / "more").mkdir(parents=True)
    wav(tmp_path / "clips" / "a.wav", music(CATALOG_TRACKS[0])[SAMPLE_RATE * 5 : SAMPLE_RATE * 12])
    wav(tmp_path / "clips" / "more" / "b.wav", music(CATALOG_TRACKS[1])[SAMPLE_RATE * 5 : SAMPLE_RATE * 12])
    (tmp_path / "clips" / "notes.txt").write_text("not audio")
    (tmp_path / "nothing").mkdir()
    code, out, _ = run("identify", "--catalog", str(built_catalog), str(tmp_path / "clips"), str(tmp_path / "nothing"))
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [Path(line["file"]).name for line in lines] == ["a.wav", "b.wav", "nothing"]
    assert [line["matches"][0]["track_id"] for line in lines[:2]] == list(CATALOG_TRACKS[:2])
    assert lines[2]["error"] == "no audio files in this folder"


def test_identify_matches_audio_piped_in(built_catalog: Path, tmp_path: Path) -> None:
    """`ffmpeg ... -f wav - | airtrace identify -`: it said "No such file or directory: '-'"."""
    clip = wav(tmp_path / "clip.wav", music(CATALOG_TRACKS[0])[SAMPLE_RATE * 5 : SAMPLE_RATE * 12])
    piped = CliRunner().invoke(main, ["identify", "--catalog", str(built_catalog), "-"], input=clip.read_bytes())
    line = json.loads(piped.stdout)
    assert piped.exit_code == 0 and line["file"] == "-" and line["matches"][0]["track_id"] == CATALOG_TRACKS[0]
    for data, error in ((b"", "nothing was piped in"), (b"not audio at all\n" * 50, "the audio piped in is not in any audio")):
        piped = CliRunner().invoke(main, ["identify", "--catalog", str(built_catalog), "-"], input=data)
        assert piped.exit_code == 1 and error in json.loads(piped.stdout)["error"]


@pytest.mark.parametrize("hop", ["0", "-1", "abc"])
def test_identify_refuses_a_hop_that_is_not_a_positive_number(built_catalog: Path, hop: str) -> None:
    code, _, err = run("identify", "--catalog", str(built_catalog), "--hop", hop, str(MUSIC / "area1-game.opus"))
    assert code == 2 and "--hop" in err and "Traceback" not in err


def test_an_interrupted_catalog_add_says_exactly_which_tracks_were_committed(tmp_path: Path, encoder_dir: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from monitor.catalog import catalog as catalog_module

    monkeypatch.setattr(catalog_module, "COMMIT_WINDOWS", 1)  # commit after every track
    add_file = catalog_module.Catalog._add_file

    def interrupted_at_the_third(self, item, report, seen_ids, embedded=None):
        if len(report.added) == 2:
            raise KeyboardInterrupt  # what Ctrl-C does
        add_file(self, item, report, seen_ids, embedded)

    monkeypatch.setattr(catalog_module.Catalog, "_add_file", interrupted_at_the_third)
    directory = tmp_path / "catalog"
    code, _, err = run("catalog", "add", "--catalog", str(directory), "--encoder", str(encoder_dir), *(str(MUSIC / f"{n}.opus") for n in CATALOG_TRACKS))
    assert code == 130
    assert f"interrupted: 2 of the 2 tracks indexed so far were committed: {CATALOG_TRACKS[0]}, {CATALOG_TRACKS[1]}" in err
    monkeypatch.undo()
    code, out, _ = run("catalog", "list", "--catalog", str(directory))
    assert [line.split("\t")[0] for line in out.splitlines()] == list(CATALOG_TRACKS[:2])
