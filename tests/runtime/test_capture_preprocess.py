"""Preprocessing in the capture thread: the same input the loop would make, tagged with the input it was made for."""
from __future__ import annotations

import numpy as np

from runtime.capture import CapturePreprocess
from runtime.frame import Frame
from runtime.manifest import InputSpec
from runtime.preprocess import Preprocessor


def _frame(seed: int) -> Frame:
    image = np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    return Frame(image=image, index=seed, timestamp=float(seed))


def test_the_capture_thread_makes_the_loops_input_and_says_for_which_spec():
    spec = InputSpec(height=32, width=40)
    prepare = CapturePreprocess(Preprocessor(spec), capacity=2)
    frame = _frame(0)
    prepared = prepare(frame)
    expected = Preprocessor(spec)(frame.image, np.empty((3, 32, 40), np.float32))
    np.testing.assert_array_equal(prepared.tensor, expected)
    assert prepared.prepared_for == spec and prepared.preprocess_seconds > 0
    assert prepared.image is frame.image and prepared.index == frame.index  # the frame itself is kept for observers


def test_after_a_swap_to_another_input_size_a_pooled_row_of_the_old_size_is_not_reused():
    old, new = InputSpec(height=32, width=40), InputSpec(height=24, width=24)
    prepare = CapturePreprocess(Preprocessor(old), capacity=2)
    first = prepare(_frame(1))
    prepare.pool.give(first.tensor)  # the loop hands the old row back
    prepare.preprocess = Preprocessor(new)  # what the pipeline does on a hot swap
    second = prepare(_frame(2))
    assert second.tensor.shape == (3, 24, 24) and second.prepared_for == new and second.prepared_for != old
    # and a row of the right size is reused, not reallocated
    prepare.pool.give(second.tensor)
    assert prepare(_frame(3)).tensor is second.tensor
