"""`airtrace bench classes`: the content classifier's accuracy on held-out sources, and its CPU cost.

Windows are built as for training (encoders.content_data) from music and a voice the classifier never
saw, 1 s each and non-overlapping, so per-window accuracy is per-second accuracy; a second table
averages each window's probabilities with its neighbours in the same example, as a stream could. Speed is windows per
second of process CPU time on one torch thread: the encoder alone against embedding and classifying
in one pass, measured alternately (best of several rounds) so machine load hits both alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from encoders.classes import CLASSES, ContentClassifier
from encoders.content_data import rms_db
from encoders.content_train import Evaluation, evaluate, held_out_windows
from monitor.bench.report import Table, percent, publish

SPEED_WINDOWS = 512
SPEED_ROUNDS = 5
SMOOTHING_SPAN = 3  # windows: a centred 3 s moving mean, inside each example
TRACK_OFFSET_SECONDS, TRACK_SECONDS = 10, 60  # of each whole held-out track: past intros, a minute
SILENCE_DB = -60.0  # quieter windows of a track are silence, not music, and are left out of its shares


def _windows_per_cpu_second(run: Callable[[], object], windows: int) -> float:
    start = time.process_time()
    run()
    return windows / max(time.process_time() - start, 1e-9)


def speed(classifier: ContentClassifier, windows: np.ndarray) -> tuple[float, float]:
    """(encoder alone, encoder + classifier) windows per CPU second on one thread, best of SPEED_ROUNDS each."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sample = windows[:SPEED_WINDOWS]
        alone, both = [], []
        for _ in range(SPEED_ROUNDS):
            alone.append(_windows_per_cpu_second(lambda: classifier.encoder.embed(sample), len(sample)))
            both.append(_windows_per_cpu_second(lambda: classifier.embed_and_classify(sample), len(sample)))
        return max(alone), max(both)
    finally:
        torch.set_num_threads(threads)


def accuracy_table(title: str, result: Evaluation, settings: dict) -> Table:
    table = Table(title, ["class", "windows", "accuracy %", "precision %"], settings=settings)
    for i, label in enumerate(CLASSES):
        labelled = int(result.confusion[:, i].sum())
        table.add(label, int(result.confusion[i].sum()), percent(int(result.confusion[i, i]), int(result.confusion[i].sum())),
                  percent(int(result.confusion[i, i]), labelled))
    table.add("music vs speech", int(result.confusion[:2].sum()), f"{100 * result.accuracy(('music', 'speech')):.1f}", None)
    table.add("all", int(result.confusion.sum()), f"{100 * result.accuracy():.1f}", None)
    return table


def confusion_table(title: str, result: Evaluation) -> Table:
    table = Table(title, ["truth", *CLASSES])
    for label, row in zip(CLASSES, result.confusion.tolist()):
        table.add(label, *row)
    return table


def track_table(name: str, classifier: ContentClassifier, tracks: Sequence[np.ndarray]) -> Table:
    """How whole held-out tracks, as released (no broadcast colouring), are labelled: the share of their
    audible seconds (over SILENCE_DB) from TRACK_OFFSET_SECONDS for up to TRACK_SECONDS each."""
    size = classifier.encoder.window_samples
    rate = classifier.encoder.sample_rate
    counts = dict.fromkeys(CLASSES, 0)
    for track in tracks:
        excerpt = np.asarray(track[TRACK_OFFSET_SECONDS * rate : (TRACK_OFFSET_SECONDS + TRACK_SECONDS) * rate], np.float32)
        windows = excerpt[: len(excerpt) // size * size].reshape(-1, size)
        audible = windows[[rms_db(w) > SILENCE_DB for w in windows]]
        for label in classifier.classify(audible)[0] if len(audible) else ():
            counts[label] += 1
    total = sum(counts.values())
    table = Table(f"Whole held-out tracks as released, audible seconds: {name}", ["label", "seconds", "share %"],
                  settings={"tracks": len(tracks), "seconds_per_track": f"{TRACK_OFFSET_SECONDS}-{TRACK_OFFSET_SECONDS + TRACK_SECONDS}",
                            "audible": f"over {SILENCE_DB:g} dBFS"})
    for label, n in counts.items():
        table.add(label, n, percent(n, total))
    return table


def run_classes(classifiers: Sequence[str], music: str, voice: str, examples: int, seconds: float, seed: int,
                out: str | None, command: str) -> None:
    first = ContentClassifier.load(classifiers[0])
    loaded = {name: ContentClassifier.load(name, first.encoder) for name in classifiers}  # one encoder: a mismatch is refused
    held_out = held_out_windows(first.encoder, music, voice, examples, seconds, seed)
    tables: list[Table] = []
    cost = Table("CPU cost per window (one thread)", ["classifier", "features", "encoder windows/s", "encoder+classes windows/s", "extra cost %"])
    for name, classifier in loaded.items():
        single, smoothed = evaluate(classifier, held_out.windows, held_out.truth, held_out.settings["windows_per_example"], SMOOTHING_SPAN)
        tables += [accuracy_table(f"Content classes per 1 s window, held out: {name}", single, held_out.settings),
                   confusion_table(f"Confusion (rows: truth, columns: label): {name}", single),
                   accuracy_table(f"The same with probabilities averaged over {SMOOTHING_SPAN} windows: {name}", smoothed, {}),
                   track_table(name, classifier, held_out.music)]
        alone, both = speed(classifier, held_out.windows)
        cost.add(name, classifier.config.features, round(alone), round(both), f"{100 * (alone / both - 1):.1f}")
    publish([*tables, cost], out, command)
