"""Tiling: tiles cover the image, the blending window is smooth and sums to one."""

import pytest
import torch

from pipeline.inference.tiling import Stitcher, blend_window, plan_tiles


@pytest.mark.parametrize("height,width,tile,overlap", [(37, 53, 16, 6), (100, 7, 32, 8), (64, 64, 64, 16), (5, 5, 32, 8)])
def test_tiles_cover_every_pixel_and_stay_inside(height, width, tile, overlap):
    covered = torch.zeros(height, width)
    for t in plan_tiles(height, width, tile, overlap):
        assert 0 <= t.y0 < t.y1 <= height and 0 <= t.x0 < t.x1 <= width
        assert t.y1 - t.y0 <= tile and t.x1 - t.x0 <= tile
        covered[t.y0 : t.y1, t.x0 : t.x1] += 1
    assert covered.min() >= 1


def test_tile_zero_means_one_tile_for_the_whole_image():
    (t,) = plan_tiles(37, 53, 0, 8)
    assert (t.y0, t.y1, t.x0, t.x1) == (0, 37, 0, 53)
    assert not (t.inner_top or t.inner_bottom or t.inner_left or t.inner_right)


def test_image_smaller_than_a_tile_is_one_tile():
    assert len(plan_tiles(20, 30, 64, 16)) == 1


def test_overlap_larger_than_half_a_tile_is_refused():
    with pytest.raises(ValueError, match="at most half"):
        plan_tiles(100, 100, 32, 17)


def test_blended_constant_tiles_reproduce_the_constant_exactly():
    """Weights are normalised: any tiling of a constant image gives the constant."""
    h, w, scale, overlap = 45, 61, 2, 8
    stitcher = Stitcher(3, h, w, scale, overlap)
    for t in plan_tiles(h, w, 24, overlap):
        th, tw = t.shape
        stitcher.add(t, torch.full((3, th * scale, tw * scale), 0.25))
    assert torch.allclose(stitcher.result(), torch.full((3, h * scale, w * scale), 0.25))


def test_a_tile_over_the_whole_image_is_the_result_as_it_is_and_a_copy():
    h, w, scale = 5, 7, 3
    (whole,) = plan_tiles(h, w, 0, 8)
    upscaled = torch.rand(3, h * scale, w * scale)
    stitcher = Stitcher(3, h, w, scale, 8)
    stitcher.add(whole, upscaled)
    result = stitcher.result()
    assert torch.equal(result, upscaled)
    upscaled.zero_()  # the buffer a next forward pass may reuse
    assert result.abs().sum() > 0


def test_a_whole_tile_and_partial_tiles_blend_as_accumulated_tiles_do():
    h, w, scale, overlap = 16, 16, 2, 4
    (whole,) = plan_tiles(h, w, 0, overlap)
    parts = plan_tiles(h, w, 10, overlap)
    image = torch.rand(3, h * scale, w * scale)
    stitcher = Stitcher(3, h, w, scale, overlap)
    stitcher.add(whole, image)
    for t in parts:
        stitcher.add(t, image[:, t.y0 * scale : t.y1 * scale, t.x0 * scale : t.x1 * scale])
    assert torch.allclose(stitcher.result(), image, atol=1e-6)


def test_window_is_zero_in_the_contaminated_band_and_one_at_the_image_border():
    tiles = plan_tiles(64, 64, 32, 16)
    first = tiles[0]  # top-left: image border on top and left, inner on bottom and right
    window = blend_window(first, 1, 16)
    assert window[0, 0] == 1.0  # image corner: full weight
    assert torch.all(window[-4:, :] == 0)  # first quarter of the overlap at an inner edge
    assert torch.all(window[:, -4:] == 0)
    assert torch.all(window[:12, :12] == 1.0)


def test_neighbouring_ramps_sum_to_one_so_there_is_no_seam():
    overlap = 16
    tiles = plan_tiles(1, 48, 32, overlap)
    assert len(tiles) == 2
    left, right = (blend_window(t, 1, overlap)[0] for t in tiles)
    total = torch.zeros(48)
    total[tiles[0].x0 : tiles[0].x1] += left
    total[tiles[1].x0 : tiles[1].x1] += right
    assert torch.allclose(total, torch.ones(48), atol=1e-6)
    ramp = right[: overlap]
    assert torch.all(ramp[1:] >= ramp[:-1])  # monotone rise, no step
    assert (ramp[1:] - ramp[:-1]).max() < 0.25
