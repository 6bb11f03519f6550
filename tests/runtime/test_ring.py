import numpy as np
import pytest

from runtime.ring import RingBuffer


def rows(values):
    return np.array([[v, -v] for v in values], np.float32)


def test_window_is_chronological_before_and_after_wrap():
    ring = RingBuffer(length=4, feature_size=2)
    for v in range(3):
        ring.push(rows([v])[0])
    assert np.array_equal(ring.window(), rows([0, 1, 2]))
    for v in range(3, 11):
        ring.push(rows([v])[0])
        expected = list(range(max(0, v - 3), v + 1))
        assert np.array_equal(ring.window(), rows(expected)), v
    assert ring.full and len(ring) == 4 and ring.pushed == 11


def test_window_is_a_read_only_view_not_a_copy():
    ring = RingBuffer(3, 2)
    for v in range(5):
        ring.push(rows([v])[0])
    window = ring.window()
    assert np.shares_memory(window, ring._data)
    with pytest.raises(ValueError):
        window[0, 0] = 1.0


def test_push_copies_the_feature():
    ring = RingBuffer(2, 2)
    feature = rows([1])[0]
    ring.push(feature)
    feature[:] = 99
    assert np.array_equal(ring.window(), rows([1]))


def test_length_one_and_reset():
    ring = RingBuffer(1, 2)
    for v in range(4):
        ring.push(rows([v])[0])
        assert np.array_equal(ring.window(), rows([v]))
    ring.reset()
    assert len(ring) == 0 and ring.window().shape == (0, 2) and ring.pushed == 0


def test_snapshot_restore_round_trip():
    ring = RingBuffer(4, 2)
    for v in range(6):
        ring.push(rows([v])[0])
    other = RingBuffer(4, 2)
    other.restore(ring.snapshot())
    assert np.array_equal(other.window(), ring.window())


def test_rejects_empty_geometry():
    with pytest.raises(ValueError):
        RingBuffer(0, 4)
