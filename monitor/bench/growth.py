"""`airtrace bench tracks --distractor-counts`: the track bench once per catalog size, as one curve.

Each size adds distractors to the same catalog (a stable sample holding every smaller one, its catalog
grown from the smaller one's), and every size answers the same seeded queries, so a change along the
curve is the catalog's doing. The matcher calibrates its confidence on each catalog's own null clips:
the false-match rate on non-catalog audio at the default confidence should stay at or below
1 - MIN_CONFIDENCE whatever the size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from monitor.bench import tracks
from monitor.bench.engines import Engine
from monitor.bench.references import BenchError, ReferenceSet
from monitor.bench.report import Table, percent, verdict
from monitor.stages.matcher import MIN_CONFIDENCE

OpenEngines = Callable[[ReferenceSet, Sequence[Engine]], list[Engine]]  # (references, engines of the size before) -> engines


def parse_counts(text: str) -> list[int | None]:
    """'100,300,all' -> [100, 300, None], smallest first; None stands for every distractor given."""
    counts: set[int | None] = set()
    for part in (p.strip() for p in text.split(",")):
        if part == "all":
            counts.add(None)
        elif part.isdigit():
            counts.add(int(part))
        else:
            raise BenchError(f"--distractor-counts {text!r}: give track counts or 'all' separated by commas, e.g. 100,300,all")
    return sorted(counts, key=lambda c: float("inf") if c is None else c)


def run(refs: ReferenceSet, counts: Sequence[int | None], open_engines: OpenEngines, rows: Sequence[str], per_row: int,
        lengths: Sequence[float], negatives: int, seed: int) -> tuple[list[Table], dict[str, Any]]:
    """`bench tracks` at each distractor count; the tables give the curve, the records every query at every size."""
    sizes, records, engines = [], [], []
    for count in counts:
        sized = refs.with_distractors(count)
        engines = open_engines(sized, engines)
        _, extra = tracks.run(sized, engines, rows, per_row, lengths, negatives, seed)
        size = {"distractors": len(sized.distractors),
                "tracks": {e.name: len(e.track_ids) for e in engines},  # what each index holds: unreadable files drop out
                "hours": {e.name: round(sum(r.seconds for r in sized.catalog if r.track_id in e.track_ids) / 3600, 2) for e in engines},
                "index_bytes": {e.name: e.index_bytes for e in engines},
                "settings": {k: v for e in engines for k, v in _engine_settings(e).items()}}
        sizes.append(size)
        records += [[size["distractors"], *record] for record in extra["per_query"]]
    names = [e.name for e in engines]
    settings = {**refs.describe(),
                "queries": f"{per_row} per row and length, {negatives} non-catalog per kind and length (seed {seed}), "
                           "the same at every size",
                "distractors": "a stable sample of the distractors given, each size holding the smaller ones"}
    tables = [_curve_table(sizes, records, names, lengths, settings), _rows_table(sizes, records, names, rows, lengths)]
    return tables, {"sizes": sizes, "per_query_fields": ["distractors", *extra["per_query_fields"]], "per_query": records}


def _engine_settings(engine: Engine) -> dict[str, Any]:
    return {f"{engine.name} {k}": v for k, v in engine.settings.items() if k in ("catalog", "index")}


def _curve_table(sizes: list[dict], records: list[list], names: Sequence[str], lengths: Sequence[float],
                 settings: dict[str, Any]) -> Table:
    """Per size and engine: top-1 and wrong-track answers over every row, and false matches on non-catalog audio."""
    nominal = 100 * (1 - MIN_CONFIDENCE)
    table = Table("Accuracy as the catalog grows: top-1, wrong track and non-catalog false matches (%)",
                  ["distractors", "catalog", "engine", "index MB", *(f"top-1 {n:g}s" for n in lengths),
                   *(f"wrong track {n:g}s" for n in lengths), f"non-catalog false matches (<= {nominal:g} %)"],
                  settings={**settings, "wrong track": "the first match names another track: a false match on catalog audio",
                            "non-catalog false matches": f"held-out music, speech and noise, every length, at the default "
                                                         f"confidence {MIN_CONFIDENCE}: the calibrated rate is {nominal:g} %"})
    for size in sizes:
        for name in names:
            mine = [r for r in records if r[0] == size["distractors"] and r[1] == name]
            asked = [[r for r in mine if r[3] == n and r[6] is not None] for n in lengths]
            negative = [r[8] is not None for r in mine if r[6] is None]
            table.add(size["distractors"], f"{size['tracks'][name]} tracks, {size['hours'][name]:.1f} h", name,
                      f"{size['index_bytes'][name] / 1e6:.1f}",
                      *(percent(sum(r[6] for r in a), len(a)) for a in asked),
                      *(percent(sum(not r[6] and r[8] is not None for r in a), len(a)) for a in asked),
                      verdict(100 * sum(negative) / len(negative), nominal, below=True) if negative else "-")
    return table


def _rows_table(sizes: list[dict], records: list[list], names: Sequence[str], rows: Sequence[str], lengths: Sequence[float]) -> Table:
    """Top-1 per distortion row: which distortions lose accuracy as the catalog grows."""
    columns = [(s["distractors"], name, n) for name in names for n in lengths for s in sizes]
    table = Table("Top-1 (%) per distortion as the catalog grows", ["distortion"]
                  + [f"{name} {n:g}s +{count}" for count, name, n in columns],
                  settings={"+N": "N distractors in the catalog"})
    for row in rows:
        cells = []
        for count, name, n in columns:
            asked = [r[6] for r in records if r[0] == count and r[1] == name and r[2] == row and r[3] == n]
            cells.append(percent(sum(asked), len(asked)))
        table.add(row, *cells)
    return table
