"""Molmo2 pooling windows against transformers' `arange_for_pooling`."""

from __future__ import annotations

import numpy as np
import pytest

from stts_jax.windows import pooling_windows, video_pooling_indices


@pytest.mark.parametrize("rows,cols", [(27, 27), (7, 7), (8, 5), (3, 3), (1, 4)])
def test_windows_match_transformers(rows, cols):
    torch = pytest.importorskip("torch")
    from transformers.models.molmo2.video_processing_molmo2 import arange_for_pooling

    expected, _, _ = arange_for_pooling(torch.arange(rows * cols).reshape(rows, cols), 3, 3)
    np.testing.assert_array_equal(pooling_windows(rows, cols), expected.numpy())


def test_molmo2_frame_has_81_full_windows_and_frames_are_offset():
    windows = pooling_windows(27, 27)
    assert windows.shape == (81, 9) and (windows >= 0).all()
    video = video_pooling_indices(3, 27, 27)
    assert video.shape == (243, 9)
    np.testing.assert_array_equal(video[81:162], windows + 729)
    assert sorted(video.ravel().tolist()) == list(range(3 * 729))  # every patch pooled exactly once
