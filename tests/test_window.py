"""SlidingCounts: totals over the last ten buckets, checked against a plain model of its rule."""

from __future__ import annotations

import copy

from hypothesis import given
from hypothesis import strategies as st

from httpx_resilience._window import SlidingCounts

_BUCKETS = 10


class Model:
    """Every event kept by its bucket; the window is the ten buckets up to the current one. A
    clock that goes backwards forgets everything (as `SlidingCounts.slide` documents)."""

    def __init__(self, window: float) -> None:
        self.width = window / _BUCKETS
        self.last: int | None = None
        self.events: dict[int, list[int]] = {}

    def move(self, now: float) -> None:
        bucket = int(now // self.width)
        if self.last is None or bucket < self.last:
            self.events.clear()
        else:
            for old in [b for b in self.events if b <= bucket - _BUCKETS]:
                del self.events[old]
        self.last = bucket

    def add(self, now: float, first: int, second: int) -> None:
        self.move(now)
        assert self.last is not None
        counts = self.events.setdefault(self.last, [0, 0])
        counts[0] += first
        counts[1] += second

    def totals(self) -> tuple[int, int]:
        return sum(c[0] for c in self.events.values()), sum(c[1] for c in self.events.values())


steps = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=100.0, allow_nan=False),
        st.integers(min_value=0, max_value=3),
        st.integers(min_value=0, max_value=3),
        st.booleans(),  # True: add, False: only slide
    ),
    max_size=60,
)


@given(window=st.sampled_from([0.5, 1.0, 3.0, 10.0, 30.0]), steps=steps, start=st.floats(0, 50))
def test_totals_match_the_model(
    window: float, steps: list[tuple[float, int, int, bool]], start: float
) -> None:
    counts, model = SlidingCounts(window), Model(window)
    now = start
    for delta, first, second, add in steps:
        # Mostly forwards in small steps (many calls share a bucket), sometimes backwards.
        now = now + delta / 20 if delta < 90 else now - delta / 10
        if add:
            counts.add(now, first, second)
            model.add(now, first, second)
        else:
            counts.slide(now)
            model.move(now)
        assert (counts.first, counts.second) == model.totals()


def test_calls_in_one_bucket_count_without_sliding() -> None:
    counts = SlidingCounts(10.0)  # buckets of 1 s
    for _ in range(5):
        counts.add(3.25, 1)
    counts.add(3.75, 1, 1)
    assert (counts.first, counts.second) == (6, 1)
    counts.add(12.5, 0, 1)  # bucket 12: bucket 3 is still in the window (3..12)
    assert (counts.first, counts.second) == (6, 2)
    counts.add(13.0, 1)  # bucket 13: bucket 3 slid out
    assert (counts.first, counts.second) == (1, 1)


@given(window=st.sampled_from([0.5, 1.0, 3.0, 10.0, 30.0]), steps=steps, start=st.floats(0, 50))
def test_peek_reads_what_a_slide_would_and_changes_nothing(
    window: float, steps: list[tuple[float, int, int, bool]], start: float
) -> None:
    counts, model = SlidingCounts(window), Model(window)
    now = start
    for delta, first, second, add in steps:
        now = now + delta / 20 if delta < 90 else now - delta / 10
        if add:
            counts.add(now, first, second)
            model.add(now, first, second)
        state = (counts.first, counts.second, list(counts._firsts), list(counts._seconds))
        later = now + delta / 5
        peeked = counts.peek(later)
        assert state == (counts.first, counts.second, counts._firsts, counts._seconds)
        if model.last is None:
            assert peeked == (0, 0)
        elif int(later // model.width) >= model.last:  # forwards: as a slide would read
            ahead = copy.deepcopy(model)
            ahead.move(later)
            assert peeked == ahead.totals()
        else:  # backwards (a `now` read before the latest count): the totals as of it
            assert peeked == model.totals()
        if not add:
            counts.slide(now)
            model.move(now)


def test_peek_behind_the_latest_call_reads_its_totals() -> None:
    counts = SlidingCounts(10.0)
    assert counts.peek(5.0) == (0, 0)
    counts.add(20.5, 2, 1)
    assert counts.peek(19.9) == (2, 1)  # a reader that read its clock before the count
    assert counts.peek(29.9) == (2, 1)  # buckets 20 to 29
    assert counts.peek(30.0) == (0, 0)  # bucket 20 slid out
    assert (counts.first, counts.second) == (2, 1)
