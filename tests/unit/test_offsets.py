import random

import pytest
from binbaton.workers.offsets import OffsetTracker

TP = ("binbaton.bin.0", 0)
TP1 = ("binbaton.bin.0", 1)


def commit(tracker: OffsetTracker) -> dict:
    offsets = tracker.committable()
    tracker.committed(offsets)
    return offsets


def test_in_order_completion_commits_past_the_last_done():
    tracker = OffsetTracker()
    for offset in range(3):
        tracker.track(TP, offset)
    for offset in range(3):
        assert tracker.done(TP, offset)
    assert tracker.committable() == {TP: 3}


def test_out_of_order_completion_stops_at_lowest_unacknowledged():
    tracker = OffsetTracker()
    for offset in range(5):
        tracker.track(TP, offset)
    tracker.done(TP, 3)
    tracker.done(TP, 1)
    assert tracker.committable() == {TP: 0}
    tracker.done(TP, 0)
    assert tracker.committable() == {TP: 2}
    tracker.done(TP, 2)
    assert tracker.committable() == {TP: 4}
    tracker.done(TP, 4)
    assert tracker.committable() == {TP: 5}


def test_nothing_done_commits_nothing_beyond_first_taken():
    tracker = OffsetTracker()
    tracker.track(TP, 7)
    tracker.track(TP, 8)
    assert tracker.committable() == {TP: 7}


def test_gaps_between_offsets_count_as_done():
    tracker = OffsetTracker()
    for offset in (10, 12, 15):
        tracker.track(TP, offset)
    tracker.done(TP, 10)
    assert tracker.committable() == {TP: 12}
    tracker.done(TP, 15)
    assert tracker.committable() == {TP: 12}
    tracker.done(TP, 12)
    assert tracker.committable() == {TP: 16}


def test_committable_only_reports_partitions_that_moved():
    tracker = OffsetTracker()
    tracker.track(TP, 0)
    tracker.track(TP1, 0)
    tracker.done(TP, 0)
    assert commit(tracker) == {TP: 1, TP1: 0}
    assert tracker.committable() == {}
    tracker.done(TP1, 0)
    assert tracker.committable() == {TP1: 1}
    tracker.track(TP, 1)
    assert commit(tracker) == {TP1: 1}


def test_committable_for_selected_partitions():
    tracker = OffsetTracker()
    tracker.track(TP, 0)
    tracker.track(TP1, 4)
    tracker.done(TP, 0)
    tracker.done(TP1, 4)
    assert tracker.committable([TP1, ("other", 0)]) == {TP1: 5}


def test_partitions_are_independent():
    tracker = OffsetTracker()
    tracker.track(TP, 0)
    tracker.track(TP1, 0)
    tracker.track(TP1, 1)
    tracker.done(TP1, 0)
    tracker.done(TP1, 1)
    assert tracker.committable() == {TP: 0, TP1: 2}
    assert tracker.pending(TP) == 1
    assert tracker.pending(TP1) == 0
    assert tracker.total_pending == 1


def test_decreasing_offset_is_rejected():
    tracker = OffsetTracker()
    tracker.track(TP, 5)
    with pytest.raises(ValueError, match="offsets must increase"):
        tracker.track(TP, 5)
    with pytest.raises(ValueError, match="offsets must increase"):
        tracker.track(TP, 3)


def test_done_twice_or_unknown_is_ignored():
    tracker = OffsetTracker()
    tracker.track(TP, 0)
    assert tracker.done(TP, 0)
    assert not tracker.done(TP, 0)
    assert not tracker.done(TP, 9)
    assert not tracker.done(TP1, 0)
    assert tracker.committable() == {TP: 1}


def test_revoke_forgets_partition_and_ignores_late_completions():
    tracker = OffsetTracker()
    tracker.track(TP, 0)
    tracker.track(TP, 1)
    tracker.track(TP1, 0)
    tracker.done(TP, 1)
    tracker.reset([TP])
    assert tracker.partitions == {TP1}
    assert not tracker.done(TP, 0)  # finished after the revoke: not ours to commit
    assert tracker.committable() == {TP1: 0}
    # Re-assigned later: the consumer restarts from the committed offset.
    tracker.track(TP, 0)
    assert tracker.committable([TP]) == {TP: 0}
    tracker.reset()
    assert tracker.committable() == {}
    assert tracker.total_pending == 0


def test_never_commits_past_an_unacknowledged_offset_randomized():
    rng = random.Random(0)
    for _ in range(50):
        tracker = OffsetTracker()
        offsets = sorted(rng.sample(range(200), 40))
        for offset in offsets:
            tracker.track(TP, offset)
        order = offsets[:]
        rng.shuffle(order)
        acknowledged: set[int] = set()
        for offset in order:
            tracker.done(TP, offset)
            acknowledged.add(offset)
            position = commit(tracker).get(TP)
            if position is None:
                continue
            assert all(o in acknowledged for o in offsets if o < position)
            missing = [o for o in offsets if o not in acknowledged]
            assert position == (min(missing) if missing else offsets[-1] + 1)
        assert tracker.committable() == {}
