"""Input-size rules of MGN and the feature-map sizes they give (paper Table 1), without TensorFlow.

An input size is always ``(height, width)`` of the raw RGB image; the Keras input shape is
``input_shape(size) = (height, width, 3)``. ResNet50 reduces the input 16-fold up to the Part branches
(conv4 output; conv5 keeps stride 1 there) and 32-fold in the Global branch, so 384x128 gives 24x8 and
12x4 maps. The Part-2 and Part-3 branches cut their map into 2 and 3 equal horizontal stripes: the map
height must be a multiple of 6, i.e. the input height a multiple of 96.
"""

from __future__ import annotations

from collections.abc import Sequence

InputSize = tuple[int, int]
PAPER_INPUT_SIZE: InputSize = (384, 128)
HEIGHT_MULTIPLE = 96
WIDTH_MULTIPLE = 16
PART_STRIDE = 16  # input pixels per Part-branch map cell
GLOBAL_STRIDE = 32  # input pixels per Global-branch map cell


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def feature_map_sizes(size: Sequence[int]) -> tuple[InputSize, InputSize]:
    """(Global branch map, Part branch map) as (rows, columns) for an input (height, width)."""
    height, width = int(size[0]), int(size[1])
    part = (_ceil_div(height, PART_STRIDE), _ceil_div(width, PART_STRIDE))
    return (_ceil_div(height, GLOBAL_STRIDE), _ceil_div(width, GLOBAL_STRIDE)), part


def check_input_size(size: Sequence[int]) -> InputSize:
    """Returns `size` as an (height, width) tuple of ints; ValueError unless MGN can take it."""
    if len(size) != 2:
        raise ValueError(f"an input size is (height, width), got {tuple(size)}")
    height, width = int(size[0]), int(size[1])
    part_height = feature_map_sizes((height, width))[1][0]
    if height <= 0 or height % HEIGHT_MULTIPLE:
        raise ValueError(
            f"input height {height} gives a {part_height}-row Part-branch feature map, which cannot be cut "
            f"into 2 and 3 equal stripes: use a height that is a multiple of {HEIGHT_MULTIPLE} "
            "(e.g. 96, 192, 288, 384)"
        )
    if width <= 0 or width % WIDTH_MULTIPLE:
        raise ValueError(f"input width {width} must be a multiple of {WIDTH_MULTIPLE} (e.g. 32, 64, 128)")
    return height, width


def input_shape(size: Sequence[int]) -> tuple[int, int, int]:
    """The Keras input shape (height, width, 3) of an input size."""
    height, width = check_input_size(size)
    return height, width, 3


def stripe_rows(map_height: int, stripes: int) -> list[tuple[int, int]]:
    """[start, end) rows of `stripes` equal horizontal stripes of a map, top to bottom."""
    if map_height % stripes:
        raise ValueError(f"a {map_height}-row map cannot be cut into {stripes} equal stripes")
    step = map_height // stripes
    return [(i * step, (i + 1) * step) for i in range(stripes)]
