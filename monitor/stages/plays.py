"""The play-event state machine: per-window catalog hits of one stream in, started/ended play events out.

`PlayTracker(config).update(state, hits, catalog)` is pure: it returns a new `StreamState` and the events
the window caused, and never touches its input. The whole per-stream state is one value that round-trips
through `to_json`/`from_json`, so a worker can keep it in Redis and another can carry on from it.

How a play is found and bounded (times are window starts in stream seconds; t_ref = speed * t + intercept):
- The state keeps the last `history_seconds` of hits. A window supports an alignment when one of its
  neighbours is the track within `tolerance_seconds` of the position the alignment predicts.
- With no play open, the matcher (match_hits, with its calibrated confidence) runs on the latest 2, 3, 6
  and 12 s: a short stretch finds a new track soonest, a long one finds a weak (noisy, talked-over) one.
  Where in the track it plays is then taken from the longest context (music repeats itself, so a few
  seconds can fit an alignment one loop away). A play opens when that alignment has `min_windows`
  supports in one run (holes of up to `max_hole_windows` allowed) reaching the newest window or the one
  before at `notice_confidence` (or `patient_windows` supports at `patient_confidence`), and when
  `confirm_windows` windows in a row found it (a chance line rarely survives the next window). A cheap
  necessary test spares the matcher on windows that cannot open anything.
- While a window supports the play and so did one of the three before it, the play extends (lone supports,
  which chance produces in a small catalog, do not) and the alignment is refitted by least squares over
  all its supports. A support counts only at `level_ratio` of the play's mean similarity or more (and a run
  starts at none below its own): in a small catalog a neighbour of the track lands near the line by chance,
  far below the track's own similarity, and would carry the play on past its end. A window that holds the
  track elsewhere may move the play to a better-supported alignment of the same track.
- A play is provisional until its support spans `min_play_seconds` and it is sure (the matcher finds it at
  `min_confidence`, stricter than the notice's, or `patient_windows` supports it at `patient_confidence`):
  only then is its `started` event published (back-dated: its boundaries come from the evidence, so the
  rule costs latency, not accuracy).
  Non-catalog music that quotes a catalog track, or talk, lands on a line for a few seconds. So that a
  consumer hears of a play without that wait, a `provisional` event (monitor.events) is published the
  moment a play opens unconfirmed, and a `withdrawn` event if it ends before it is confirmed: a started
  play is never withdrawn, and a provisional one is never left open. A newcomer found while a play still
  holds the stream (the play silent for `takeover_seconds`, the newcomer's run too short yet to end it: a
  track that follows another) is announced the same way, as the stream's herald; the play that later
  opens on its track is that play (same id), and a herald whose line falls silent for `dropout_seconds`
  is withdrawn.
- One airing, one play: a play survives `dropout_seconds` without support (a DJ over the intro, a noise
  burst, lost hits) and carries on when its line is heard again; the ended event is decided only once that
  gap has passed. Another line of its track found meanwhile is the same airing (a line refitted a little
  off, or one loop away), unless it starts the track from the top after the play fell silent: the track
  played again. The play ends sooner, after `takeover_seconds`, if another track's run spanning
  `min_play_seconds` and sure is found meanwhile. A gap of the stream (a reconnect) shorter than
  `dropout_seconds` is such a dropout too: the play carries on if its line is heard again after it; a
  longer gap, or a stream whose time went back (a new ingest run), ends it at once.
- Boundaries come from the alignment, not from hit windows: the first and last supporting windows,
  corrected by `start_edge_seconds` / `end_edge_seconds` (a window matches once part of it holds the
  track; the figures are medians measured with `airtrace bench broadcast`), or the track's own
  start or end where the alignment puts it within `snap_start_seconds` / `snap_end_seconds`.
- Replays are harmless: a window whose seq is not newer than the last one seen changes nothing, and ids
  are deterministic (monitor.events), so reprocessing yields the same events.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from monitor.events import PlayEvent, PlayNotice, ProvisionalEvent, WithdrawnEvent, play_id
from monitor.records import WindowHits
from monitor.stages.play_runs import Runs, fit_sums, refit
from monitor.stages.play_state import RECENT_WINDOWS, CatalogInfo, OpenPlay, PlayConfig, Run, StreamState, TrackLike

RECENT_MASK = (1 << RECENT_WINDOWS) - 1  # OpenPlay.recent: the latest windows' support, newest in bit 0
EARLIER_MASK = RECENT_MASK & ~1  # the windows before the newest: one of them must support too for the play to extend


class PlayTracker:
    def __init__(self, config: PlayConfig = PlayConfig()):
        self.config = config
        self.runs = Runs(config)

    def update(self, state: StreamState, hits: WindowHits, catalog: CatalogInfo) -> tuple[StreamState, list[PlayNotice]]:
        """Feed one window's hits (in seq order); returns the new state and the events it caused."""
        if hits.seq <= state.last_seq:
            return state, []
        events: list[PlayNotice] = []
        if hits.after_gap:
            state, events = self._gap(state, hits, catalog)
        history = tuple(h for h in state.history if h.offset > hits.offset - self.config.history_seconds) + (hits,)
        spent = tuple((track, seq) for track, seq in state.spent if seq >= history[0].seq)
        state = replace(state, history=history, last_seq=hits.seq, spent=spent)
        if state.herald is not None:
            state, withdrawn = self._follow_herald(state, hits, catalog)
            events += withdrawn
        if state.play is not None:
            state, ended = self._follow(state, hits, catalog)
            events += ended
            if state.play is not None:
                return state, events
        state, run = self._candidate(state, catalog)
        if run is not None:
            state, started = self._open(state, run, hits, catalog)
            events += started
        return state, events

    def _gap(self, state: StreamState, hits: WindowHits, catalog: CatalogInfo) -> tuple[StreamState, list[PlayNotice]]:
        """The stream was lost just before `hits`. Its history is forgotten (no run spans the gap), and so is an
        open play unless the gap is a short loss on the same clock: a reconnect whose stream time jumped ahead by
        the time lost. That play is then silent, as in a dropout: it carries on as one airing if its line is heard
        again within `dropout_seconds` (a station does not stop its song for our outage) and ends at its last
        support otherwise. Stream time that went back (a new ingest run counts from 0) cannot be lined up."""
        newest = state.history[-1].offset if state.history else None
        if newest is not None and hits.offset > newest and hits.offset - newest < self.config.dropout_seconds:
            return replace(state, history=(), pending=None, floor_offset=hits.offset), []
        state, events = self.close(state, catalog)
        return replace(state, floor_offset=hits.offset), events

    def close(self, state: StreamState, catalog: CatalogInfo) -> tuple[StreamState, list[PlayNotice]]:
        """End the open play (at a gap or the end of the stream) and forget the history."""
        events = [self._ending(state, p, catalog)[0] for p in (state.play, state.herald) if p is not None]
        return replace(state, history=(), play=None, spent=(), pending=None, herald=None), events

    def _follow(self, state: StreamState, hits: WindowHits, catalog: CatalogInfo) -> tuple[StreamState, list[PlayNotice]]:
        """Extend the open play with this window, or end it after a dropout or a takeover."""
        play = state.play
        assert play is not None
        support = self._support(play, hits)
        recent = ((play.recent << 1) | (support is not None)) & RECENT_MASK
        if support is not None and recent & EARLIER_MASK:  # lone supports do not extend a play
            play = self._extend(play, hits, support)
        play = replace(play, recent=recent)
        if support is None and any(n.track_id == play.line.track_id for n in hits.neighbours):
            play = self._realign(replace(state, play=play), play, catalog)
        state, started = self._announce(replace(state, play=play), play, hits, catalog)
        play = state.play
        assert play is not None
        silent = hits.offset - play.last_support_offset
        if silent >= self.config.dropout_seconds:
            return self._end(state, play), started + self._ending(state, play, catalog)
        if silent >= self.config.takeover_seconds:
            state, run = self._candidate(state, catalog)
            if run is not None and run.line.track_id == play.line.track_id and not self._restart(state, play, run, catalog):
                if play.published and self.runs.sure(state, run.line, catalog) is None:  # a run only noticed does not carry
                    return state, started  # a reported play on: after its track ends, chance runs of it come at that level
                state, announced = self._announce(state, self._rejoin(state, play, run, catalog), hits, catalog)
                return state, started + announced
            if run is not None and self._run_span(run) >= self.config.min_play_seconds and self.runs.sure(state, run.line, catalog) is not None:
                ended = self._ending(state, play, catalog)  # only a newcomer that cannot be a phantom ends our play
                state, opened = self._open(self._end(state, play), run, hits, catalog)
                return state, [*started, *ended, *opened]
            if run is not None:
                state, heard = self._herald(state, run, hits, catalog)
                return state, started + heard
        return state, started

    def _support(self, play: OpenPlay, hits: WindowHits) -> tuple[float, float] | None:
        """The window's support of the play's line, unless it is a chance neighbour well below the play's level."""
        support = self.runs.support(hits, play.line)
        if support is not None and support[0] < self.config.level_ratio * play.score / play.fit[0]:
            return None
        return support

    def _herald(self, state: StreamState, run: Run, hits: WindowHits, catalog: CatalogInfo) -> tuple[StreamState, list[PlayNotice]]:
        """Announce a newcomer provisionally while the play it may take over still holds the stream. Its run is
        as sure as one that opens a play after silence, only too short yet to end another play: without this,
        a track that follows another (a crossfade, a jingle between) was heard only once its run spanned
        `min_play_seconds`. A run of another track replaces the herald (which is withdrawn) only once the
        herald's line has been silent for `takeover_seconds`: similar tracks take turns on a line."""
        herald = state.herald
        if herald is not None and (herald.line.track_id == run.line.track_id
                                   or state.history[-1].offset - herald.last_support_offset < self.config.takeover_seconds):
            return state, []
        withdrawn = [] if herald is None else self._ending(state, herald, catalog)
        newcomer = self._newcomer(state, run, hits, catalog)
        return replace(state, herald=newcomer), [*withdrawn, self._provisional(state, newcomer, hits, catalog)]

    def _follow_herald(self, state: StreamState, hits: WindowHits, catalog: CatalogInfo) -> tuple[StreamState, list[PlayNotice]]:
        """Keep the herald while its line is heard; withdraw it after `dropout_seconds` without, as an
        unconfirmed play would be."""
        herald = state.herald
        assert herald is not None
        if self._support(herald, hits) is not None:
            return replace(state, herald=replace(herald, last_support_seq=hits.seq, last_support_offset=hits.offset)), []
        if hits.offset - herald.last_support_offset >= self.config.dropout_seconds:
            return replace(state, herald=None), self._ending(state, herald, catalog)
        return state, []

    def _announce(self, state: StreamState, play: OpenPlay, hits: WindowHits, catalog: CatalogInfo) -> tuple[StreamState, list[PlayEvent]]:
        """Publish the started event of a provisional play once its support spans `min_play_seconds` and is sure
        (the confidence that made it so is the play's from then on)."""
        span = play.last_support_offset - play.first_support_offset
        sure = None if play.published or span < self.config.min_play_seconds else self.runs.sure(state, play.line, catalog)
        if sure is None:
            return replace(state, play=play), []
        play = replace(play, published=True, line=replace(play.line, confidence=max(sure, play.line.confidence)))
        return replace(state, play=play), [self._started(state, play, hits, catalog)]

    def _ending(self, state: StreamState, play: OpenPlay, catalog: CatalogInfo) -> list[PlayNotice]:
        """The ended event of a published play; a provisional one is withdrawn."""
        if play.published:
            return [self._ended(state, play, catalog)]
        return [WithdrawnEvent(**self._heard(state, play, catalog), decided_offset=self._seen_until(state, play))]

    def _extend(self, play: OpenPlay, hits: WindowHits, support: tuple[float, float]) -> OpenPlay:
        similarity, ref = support
        n, st, sr, stt, str_ = play.fit
        t = hits.offset - play.stream_start
        fit = (n + 1, st + t, sr + ref, stt + t * t, str_ + t * ref)
        return replace(
            play, line=refit(play.line, fit, play.stream_start), fit=fit, score=play.score + similarity,
            last_support_seq=hits.seq, last_support_offset=hits.offset,
        )

    def _candidate(self, state: StreamState, catalog: CatalogInfo) -> tuple[StreamState, Run | None]:
        """A run to open a play with, once `confirm_windows` windows in a row found the same line: a chance
        line through the latest hits rarely survives the next window, a real one grows stronger."""
        run = self.runs.find(state, catalog)
        if run is None:
            return replace(state, pending=None), None
        count, now = 1, state.history[-1].offset
        if state.pending is not None:
            track, speed, intercept, seen = state.pending
            if track == run.line.track_id and abs(speed * now + intercept - run.line.ref(now)) <= self.config.tolerance_seconds:
                count = seen + 1
        if count >= self.config.confirm_windows:
            return replace(state, pending=None), run
        return replace(state, pending=(run.line.track_id, run.line.speed, run.line.intercept, count)), None

    def _run_span(self, run: Run) -> float:
        return run.supports[-1][0].offset - run.supports[0][0].offset

    def _end(self, state: StreamState, play: OpenPlay) -> StreamState:
        return replace(state, play=None, spent=state.spent + ((play.line.track_id, state.last_seq),))

    def _open(self, state: StreamState, run: Run, hits: WindowHits, catalog: CatalogInfo) -> tuple[StreamState, list[PlayNotice]]:
        """Open a play on `run`: the herald's play if it is of the run's track (heard already, perhaps on a line
        one loop away: the play's events carry the line it settles on)."""
        play, heard = self._newcomer(state, run, hits, catalog), False
        if state.herald is not None and state.herald.line.track_id == run.line.track_id:
            play, state, heard = replace(play, play_id=state.herald.play_id), replace(state, herald=None), True
        state, started = self._announce(state, play, hits, catalog)
        if started or heard:
            return state, started
        return state, [self._provisional(state, play, hits, catalog)]

    def _provisional(self, state: StreamState, play: OpenPlay, hits: WindowHits, catalog: CatalogInfo) -> ProvisionalEvent:
        return ProvisionalEvent(**self._heard(state, play, catalog), decided_offset=hits.offset + self.config.window_seconds)

    def _newcomer(self, state: StreamState, run: Run, hits: WindowHits, catalog: CatalogInfo) -> OpenPlay:
        """An unconfirmed play on `run`, as it would open at the window `hits`."""
        first, last = run.supports[0][0], run.supports[-1][0]
        start, snapped = self._start(state, run, catalog)
        return OpenPlay(
            play_id=play_id(state.stream_id, run.line.track_id, first.seq),
            line=run.line,
            start_seq=first.seq,
            stream_start=start,
            start_snapped=snapped,
            air_minus_offset=first.air_time - first.offset,
            **_evidence(run, start),
            first_support_offset=first.offset,
            last_support_seq=last.seq,
            last_support_offset=last.offset,
            published=False,
            recent=0b1 if last.seq == hits.seq else 0b10,
        )

    def _heard(self, state: StreamState, play: OpenPlay, catalog: CatalogInfo) -> dict[str, Any]:
        """What every event of `play` says of it as known now: its id, track, start, alignment and evidence."""
        line, start = play.reported, self._play_start(state, play)
        return dict(
            play_id=play.play_id, stream_id=state.stream_id, track_id=line.track_id, started_at=play.air_minus_offset + start,
            stream_start=start, ref_start=max(0.0, line.ref(start)), speed=line.speed, score=play.score, confidence=play.line.confidence,
            track=_metadata(catalog.track(line.track_id)),
        )

    def _seen_until(self, state: StreamState, play: OpenPlay) -> float:
        """The end of the newest window heard: when an ending or a withdrawal is decided."""
        newest = state.history[-1].offset if state.history else play.last_support_offset
        return newest + self.config.window_seconds

    def _started(self, state: StreamState, play: OpenPlay, hits: WindowHits, catalog: CatalogInfo) -> PlayEvent:
        """The started event of `play`, decided at the window `hits`."""
        return PlayEvent(**self._heard(state, play, catalog), state="started", decided_offset=hits.offset + self.config.window_seconds)

    def _play_start(self, state: StreamState, play: OpenPlay) -> float:
        """Where the play starts, with a snapped start refined by the line as it is known now."""
        if play.start_snapped:
            refined = max(play.reported.stream_time(0.0), min(state.floor_offset, play.stream_start))  # a play heard across a gap began before it
            if abs(refined - play.stream_start) <= self.config.snap_start_seconds:
                return refined
        return play.stream_start

    def _start(self, state: StreamState, run: Run, catalog: CatalogInfo) -> tuple[float, bool]:
        """Where the play starts, and whether that is the track's own start: the first supporting window
        corrected for the window's edge, or where the alignment puts the track's start if that is near."""
        start = max(run.supports[0][0].offset + self.config.start_edge_seconds, state.floor_offset)
        track_start = run.line.stream_time(0.0)
        if catalog.track(run.line.track_id) is not None and abs(track_start - start) <= self.config.snap_start_seconds:
            return max(track_start, state.floor_offset), True
        return start, False

    def _realign(self, state: StreamState, play: OpenPlay, catalog: CatalogInfo) -> OpenPlay:
        """Move the play to a better line of its own track. Music repeats itself, so the first seconds of
        a play can fit an alignment one loop away; when another line of the track is supported by clearly
        more windows since the play opened, that one is where the track really is. The start moves with
        it when either line put it at the track's own start; else the earlier evidence stands, since the
        new line's run may reach back less far (a noisy stretch, or the history's end)."""
        if not self._young(play):
            return play
        history = self.runs.usable(state)
        run = self.runs.best(history, play.line.track_id, catalog)
        now = history[-1].offset
        if run is None or abs(run.line.ref(now) - play.line.ref(now)) <= self.config.tolerance_seconds:
            return play
        since = [h for h in history if h.seq >= play.start_seq]
        current, better = self.runs.count(since, play.line), self.runs.count(since, run.line)
        if better < max(current + self.config.min_windows, 1.5 * current):  # loops offer near-equal lines: keep ours
            return play
        return self._move(state, play, run, catalog)

    def _restart(self, state: StreamState, play: OpenPlay, run: Run, catalog: CatalogInfo) -> bool:
        """Whether `run`, of the play's own track, is the track played again: it starts the track from its top
        after the play fell silent, and the play is past its first seconds. Any other line of the track found
        while the play is silent is the same airing, heard again after a dropout on a line refitted a little
        off ours, or one loop away."""
        return not self._young(play) and run.supports[0][0].seq >= play.last_support_seq and self._start(state, run, catalog)[1]

    def _rejoin(self, state: StreamState, play: OpenPlay, run: Run, catalog: CatalogInfo) -> OpenPlay:
        """The play carried on by `run` of its own airing: near its line, the run's newer supports join the
        fit (keeping the speed the play's long evidence measured). A young play moves to a line far from its
        own, which may be where the track really is; a play past its first seconds follows it, its events
        keeping the start and alignment measured before: a reprise or an edit heard a loop away is still its
        airing, and its last seconds must not re-date what the long evidence measured."""
        if self._young(play):
            return self._move(state, play, run, catalog)
        now = state.history[-1].offset
        if abs(run.line.ref(now) - play.line.ref(now)) > self.config.same_airing_seconds:
            return self._follow_line(play, run)
        for h, similarity, ref in run.supports:
            if h.seq > play.last_support_seq:
                play = self._extend(play, h, (similarity, ref))
        return play

    def _follow_line(self, play: OpenPlay, run: Run) -> OpenPlay:
        """The play following `run`'s line of its airing from now on (its supports and end come from it), while
        its events keep the start and the alignment (position, speed) that its longer evidence measured."""
        last = run.supports[-1][0]
        return replace(
            play, line=replace(run.line, confidence=play.line.confidence), measured=play.reported,
            last_support_seq=max(last.seq, play.last_support_seq), last_support_offset=max(last.offset, play.last_support_offset),
            **_evidence(run, play.stream_start),
        )

    def _young(self, play: OpenPlay) -> bool:
        """Whether the play may still move to another line of its track (see `realign_seconds`)."""
        return play.last_support_offset - play.first_support_offset < self.config.realign_seconds

    def _move(self, state: StreamState, play: OpenPlay, run: Run, catalog: CatalogInfo) -> OpenPlay:
        """The play on the line of `run`, its evidence restarted from that run's. A play last heard before a gap of
        the stream follows the run's line instead, keeping what it measured: stream time after a gap is the
        clock's estimate of the time lost, so a line found there may lie off the play's without being another."""
        if play.last_support_offset < state.floor_offset:
            return self._follow_line(play, run)
        history = state.history
        start, snapped = self._start(state, run, catalog)
        if not snapped and not play.start_snapped or run.supports[0][0].seq == history[0].seq:
            start, snapped = min(start, play.stream_start), snapped and start <= play.stream_start
        first, last = run.supports[0][0], run.supports[-1][0]
        return replace(
            play, line=replace(run.line, confidence=play.line.confidence), stream_start=start, start_snapped=snapped,
            first_support_offset=min(play.first_support_offset, first.offset), last_support_seq=last.seq, last_support_offset=last.offset,
            **_evidence(run, start),
        )

    def _ended(self, state: StreamState, play: OpenPlay, catalog: CatalogInfo) -> PlayEvent:
        """The ended event of `play`, as of the newest window in `state`."""
        line, config = play.line, self.config
        seen_until, heard = self._seen_until(state, play), self._heard(state, play, catalog)
        start = heard["stream_start"]
        end = play.last_support_offset + config.window_seconds - config.end_edge_seconds
        info = catalog.track(line.track_id)
        if info is not None:
            track_end = line.stream_time(info.seconds)
            if abs(track_end - end) <= config.snap_end_seconds:
                end = track_end
        end = max(min(end, seen_until), start)
        ref_end = play.reported.ref(end) if info is None else min(play.reported.ref(end), info.seconds)
        return PlayEvent(**heard, state="ended", decided_offset=seen_until, ended_at=play.air_minus_offset + end, stream_end=end, ref_end=ref_end)


def _evidence(run: Run, start: float) -> dict[str, Any]:
    """A play's score and least-squares sums from `run`'s supports alone, times counted from `start`."""
    return {"score": sum(sim for _, sim, _ in run.supports), "fit": fit_sums([(h.offset - start, ref) for h, _, ref in run.supports])}


def _metadata(info: TrackLike | None) -> dict[str, Any]:
    return dict(info.metadata or {}) if info is not None else {}
