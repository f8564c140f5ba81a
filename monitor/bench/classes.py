"""`airtrace bench classes`: the content classifier's accuracy on held-out sources, and its CPU cost.

Windows are built as for training (encoders.content_data) from music and a voice the classifier never
saw, 1 s each and non-overlapping, so per-window accuracy is per-second accuracy. Speed is windows per
second of process CPU time on one torch thread: the encoder alone against embedding and classifying
in one pass, measured alternately (best of several rounds) so machine load hits both alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from encoders.classes import CLASSES, ContentClassifier
from encoders.content_train import Evaluation, evaluate, held_out_windows
from monitor.bench.report import Table, percent, publish

SPEED_WINDOWS = 512
SPEED_ROUNDS = 5


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


def accuracy_tables(name: str, result: Evaluation, settings: dict) -> list[Table]:
    per_class = Table(f"Content classes per second, held out: {name}", ["class", "windows", "accuracy %", "precision %"], settings=settings)
    for i, label in enumerate(CLASSES):
        labelled = int(result.confusion[:, i].sum())
        per_class.add(label, int(result.confusion[i].sum()), percent(int(result.confusion[i, i]), int(result.confusion[i].sum())),
                      percent(int(result.confusion[i, i]), labelled))
    per_class.add("music vs speech", int(result.confusion[:2].sum()), f"{100 * result.accuracy(('music', 'speech')):.1f}", None)
    per_class.add("all", int(result.confusion.sum()), f"{100 * result.accuracy():.1f}", None)
    confusion = Table(f"Confusion (rows: truth, columns: label): {name}", ["truth", *CLASSES])
    for label, row in zip(CLASSES, result.confusion.tolist()):
        confusion.add(label, *row)
    return [per_class, confusion]


def run_classes(classifiers: Sequence[str], music: str, voice: str, examples: int, seconds: float, seed: int,
                out: str | None, command: str) -> None:
    first = ContentClassifier.load(classifiers[0])
    loaded = {name: ContentClassifier.load(name, first.encoder) for name in classifiers}  # one encoder: a mismatch is refused
    windows, truth, settings = held_out_windows(first.encoder, music, voice, examples, seconds, seed)
    tables: list[Table] = []
    cost = Table("CPU cost per window (one thread)", ["classifier", "features", "encoder windows/s", "encoder+classes windows/s", "extra cost %"])
    for name, classifier in loaded.items():
        tables += accuracy_tables(name, evaluate(classifier, windows, truth), settings)
        alone, both = speed(classifier, windows)
        cost.add(name, classifier.config.features, round(alone), round(both), f"{100 * (alone / both - 1):.1f}")
    publish([*tables, cost], out, command)
