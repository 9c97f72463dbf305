"""Tier 1: the simulator itself catches broken schedules (deadlock, mismatched or unmatched
messages, races, out-of-bounds ranges, writes to IN, bad deps and peers), and the random
completion order exposes ordering bugs."""
from __future__ import annotations

import numpy as np
import pytest

from collx.algos.ir import Buf, Schedule, copy, recv, recv_reduce, send
from collx.algos.simulator import ScheduleError, check_hazards, cost, simulate, validate

pytestmark = pytest.mark.timeout(30)


def sched(steps, in_counts, out_counts, scratch=None):
    n = len(steps)
    return Schedule("test", "handmade", n, steps, list(in_counts), list(out_counts),
                    list(scratch or [0] * n))


def ones(s):
    return [np.ones(c) for c in s.in_counts]


def exchange(count=4):
    """A correct two-rank exchange: each rank copies its input and receives the peer's."""
    return sched([[copy(Buf.OUT, 0, count, Buf.IN, 0), send(1, Buf.IN, 0, count),
                   recv(1, Buf.OUT, count, count)],
                  [copy(Buf.OUT, count, count, Buf.IN, 0), send(0, Buf.IN, 0, count),
                   recv(0, Buf.OUT, 0, count)]], [count, count], [2 * count, 2 * count])


def test_correct_schedule_runs():
    s = exchange()
    outs = simulate(s, [np.arange(4.0), np.arange(4.0) + 10])
    for o in outs:
        np.testing.assert_array_equal(o, np.r_[np.arange(4.0), np.arange(4.0) + 10])
    check_hazards(s, in_place=False)
    check_hazards(s, in_place=True)


def test_deadlock_is_reported_with_what_each_rank_waits_for():
    # both ranks wait to receive before they send
    s = sched([[recv(1, Buf.OUT, 0, 1), send(1, Buf.IN, 0, 1, deps=(0,))],
               [recv(0, Buf.OUT, 0, 1), send(0, Buf.IN, 0, 1, deps=(0,))]], [1, 1], [1, 1])
    with pytest.raises(ScheduleError, match="deadlock") as e:
        simulate(s, ones(s))
    msg = str(e.value)
    assert "rank 0" in msg and "rank 1" in msg and "waits for its deps [0]" in msg


def test_fifo_posting_order_is_enforced():
    # rank 0's second send cannot be posted before its first, which waits for rank 1's
    # send, which waits for rank 0's second send: deadlock under FIFO matching.
    s = sched([[recv(1, Buf.OUT, 0, 1), send(1, Buf.IN, 0, 1, deps=(0,)), send(1, Buf.IN, 0, 1)],
               [recv(0, Buf.OUT, 0, 1), recv(0, Buf.OUT, 0, 1),
                send(0, Buf.IN, 0, 1, deps=(1,))]], [1, 1], [1, 1])
    with pytest.raises(ScheduleError, match="cannot be posted"):
        simulate(s, ones(s))


def test_count_mismatch():
    s = sched([[send(1, Buf.IN, 0, 4)], [recv(0, Buf.OUT, 0, 3)]], [4, 0], [0, 4])
    with pytest.raises(ScheduleError, match="count mismatch.*4 elements.*expects 3"):
        simulate(s, ones(s))


def test_unmatched_message():
    s = sched([[send(1, Buf.IN, 0, 1), send(1, Buf.IN, 0, 1)], [recv(0, Buf.OUT, 0, 1)]],
              [1, 0], [0, 1])
    with pytest.raises(ScheduleError, match="unmatched"):
        simulate(s, ones(s))


def test_out_of_bounds():
    s = sched([[send(1, Buf.IN, 2, 3)], [recv(0, Buf.OUT, 0, 3)]], [4, 0], [0, 3])
    with pytest.raises(ScheduleError, match="out of bounds"):
        simulate(s, ones(s))
    s = sched([[copy(Buf.OUT, 0, 2, Buf.SCRATCH, 0)]], [0], [2], [1])
    with pytest.raises(ScheduleError, match="source out of bounds"):
        validate(s)


def test_reduction_that_writes_in():
    s = sched([[send(1, Buf.IN, 0, 2)], [recv_reduce(0, Buf.IN, 0, 2, Buf.IN, 0)]], [2, 2],
              [0, 0])
    with pytest.raises(ScheduleError, match="writes IN"):
        simulate(s, ones(s))
    with pytest.raises(ScheduleError, match="writes IN"):
        check_hazards(s, in_place=False)


@pytest.mark.parametrize("deps", [(0,), (1,), (-1,)])
def test_bad_deps(deps):
    s = sched([[copy(Buf.OUT, 0, 1, Buf.IN, 0, deps=deps)]], [1], [1])
    with pytest.raises(ScheduleError, match="bad dependency"):
        validate(s)


@pytest.mark.parametrize("peer", [1, 2, -1])
def test_bad_peer(peer):
    s = sched([[], [send(peer, Buf.IN, 0, 1)]], [0, 1], [0, 0])
    with pytest.raises(ScheduleError, match="peer"):
        validate(s)


def test_race_found_statically():
    # two receives into overlapping ranges, not ordered by deps
    s = sched([[send(1, Buf.IN, 0, 2), send(1, Buf.IN, 0, 2)],
               [recv(0, Buf.OUT, 0, 2), recv(0, Buf.OUT, 1, 2)]], [2, 0], [0, 3])
    simulate(s, ones(s))                    # runs, but the result depends on timing
    with pytest.raises(ScheduleError, match="race on rank 1.*\\[1:2\\]"):
        check_hazards(s, in_place=False)
    # ordering them by deps fixes it
    s.steps[1][1] = recv(0, Buf.OUT, 1, 2, deps=(0,))
    check_hazards(s, in_place=False)


def test_send_source_overwritten_while_in_flight():
    s = sched([[send(1, Buf.OUT, 0, 2), copy(Buf.OUT, 0, 2, Buf.IN, 0)], [recv(0, Buf.OUT, 0, 2)]],
              [2, 0], [2, 2])
    with pytest.raises(ScheduleError, match="race on rank 0"):
        check_hazards(s, in_place=False)


def test_in_place_only_race():
    # rank 0 sends IN while receiving into OUT over the same range: fine out of place, a race
    # when IN is OUT
    s = sched([[send(1, Buf.IN, 0, 2), recv(1, Buf.OUT, 0, 2)],
               [send(0, Buf.IN, 0, 2), recv(0, Buf.OUT, 0, 2)]], [2, 2], [2, 2])
    check_hazards(s, in_place=False)
    with pytest.raises(ScheduleError, match="in-place"):
        check_hazards(s, in_place=True)
    # the random completion order shows the effect: whichever pair completes first overwrites
    # what the other sends, so the swap never comes out right, and which value wins varies
    results = set()
    for seed in range(20):
        outs = simulate(s, [np.array([1.0, 1.0]), np.array([2.0, 2.0])], in_place=True,
                        seed=seed)
        results.add((outs[0][0], outs[1][0]))
    assert results == {(1.0, 1.0), (2.0, 2.0)}


def test_copy_onto_itself_is_not_a_race_in_place():
    # root-style: copy IN->OUT and send IN concurrently; in place the copy is skipped
    s = sched([[copy(Buf.OUT, 0, 3, Buf.IN, 0), send(1, Buf.IN, 0, 3)], [recv(0, Buf.OUT, 0, 3)]],
              [3, 0], [3, 3])
    check_hazards(s, in_place=False)
    check_hazards(s, in_place=True)


def test_unwritten_output_shows_the_sentinel():
    s = sched([[copy(Buf.OUT, 0, 2, Buf.IN, 0)]], [2], [3])
    out = simulate(s, [np.ones(2)])[0]
    assert np.isnan(out[2]) and (out[:2] == 1).all()
    out = simulate(s, [np.ones(2, np.int64)])[0]
    assert out[2] != 1


def test_ops():
    s = sched([[send(1, Buf.IN, 0, 3)], [recv_reduce(0, Buf.OUT, 0, 3, Buf.IN, 0)]], [3, 3],
              [0, 3])
    a, b = np.array([1.0, 5.0, -2.0]), np.array([3.0, 2.0, 4.0])
    for op, ref in [("sum", a + b), ("prod", a * b), ("min", np.minimum(a, b)),
                    ("max", np.maximum(a, b))]:
        np.testing.assert_array_equal(simulate(s, [a, b], op=op)[1], ref)
    with pytest.raises(ValueError):
        simulate(s, [a, b], op="xor")


def test_inputs_are_not_modified():
    s = exchange()
    xs = [np.arange(4.0), np.arange(4.0)]
    simulate(s, xs, in_place=True)
    np.testing.assert_array_equal(xs[0], np.arange(4.0))


def test_cost_counts_bytes_messages_and_rounds():
    s = sched([[send(1, Buf.IN, 0, 4), recv(2, Buf.OUT, 0, 4)],
               [recv(0, Buf.OUT, 0, 4), send(2, Buf.OUT, 0, 4, deps=(0,))],
               [recv(1, Buf.OUT, 0, 4), send(0, Buf.OUT, 0, 4, deps=(0,))]],
              [4, 0, 0], [4, 4, 4])
    c = cost(s, itemsize=8, alpha=1.0, beta=0.5)
    assert c["bytes_sent"] == [32, 32, 32] and c["bytes_recv"] == [32, 32, 32]
    assert c["msgs_sent"] == [1, 1, 1] and c["max_bytes_sent"] == 32
    assert c["rounds"] == 3 and c["critical_bytes"] == 96 and c["time"] == 3 * (1 + 16)
