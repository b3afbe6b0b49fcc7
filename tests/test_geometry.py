"""Input-size rules and feature-map sizes against the paper's Table 1, without TensorFlow."""

from __future__ import annotations

import pytest

from mgn_tf.geometry import check_input_size, feature_map_sizes, input_shape, stripe_rows


def test_paper_sizes():
    assert feature_map_sizes((384, 128)) == ((12, 4), (24, 8))  # Table 1: Global 12x4, Part 24x8
    assert feature_map_sizes((96, 32)) == ((3, 1), (6, 2))
    assert input_shape((384, 128)) == (384, 128, 3)


@pytest.mark.parametrize("size", [(128, 64), (144, 48), (96, 40), (0, 32), (96, 32, 3), (192,)])
def test_sizes_that_cannot_be_striped_are_rejected(size):
    with pytest.raises(ValueError, match="input"):
        check_input_size(size)


def test_stripes_cut_the_part_map_into_equal_rows():
    assert stripe_rows(24, 2) == [(0, 12), (12, 24)]
    assert stripe_rows(24, 3) == [(0, 8), (8, 16), (16, 24)]
    with pytest.raises(ValueError, match="equal stripes"):
        stripe_rows(8, 3)
    for height in (96, 192, 288, 384):
        part_rows = feature_map_sizes(check_input_size((height, 32)))[1][0]
        assert stripe_rows(part_rows, 2) and stripe_rows(part_rows, 3)
