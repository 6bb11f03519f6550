import numpy as np
from helpers import naive

from runtime.manifest import InputSpec
from runtime.preprocess import Preprocessor


def test_matches_the_naive_pipeline_for_both_colour_orders():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    for order in ("RGB", "BGR"):
        spec = InputSpec(height=96, width=128, color_order=order)
        out = np.zeros((3, 96, 128), np.float32)
        Preprocessor(spec)(image, out)
        np.testing.assert_allclose(out, naive(image, spec), atol=1e-5)


def test_writes_in_place_into_an_engine_row_without_resizing_when_sizes_match():
    spec = InputSpec(height=64, width=64)
    image = np.full((64, 64, 3), 128, np.uint8)
    batch = np.zeros((4, 3, 64, 64), np.float32)
    result = Preprocessor(spec)(image, batch[2])
    assert np.shares_memory(result, batch)
    assert np.all(batch[0] == 0) and np.all(batch[3] == 0)
    np.testing.assert_allclose(batch[2], naive(image, spec), atol=1e-5)
