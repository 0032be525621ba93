"""Host preprocessing against transformers' Molmo2 video processing functions and torch's resize."""

from __future__ import annotations

import numpy as np
import pytest

from stts_jax.data.frames import sample_frames, video_patches
from stts_jax.windows import video_pooling_indices


@pytest.mark.parametrize("shape", [(3, 240, 320), (2, 500, 380), (1, 378, 378), (2, 100, 90)])
def test_patches_equal_transformers_processing(shape):
    """transformers' Molmo2VideoProcessor resizes with torchvision (bilinear, antialias=False), which for
    tensors is torch's interpolate; its patchify and pooling functions are used as they are."""
    torch = pytest.importorskip("torch")
    from transformers.models.molmo2.video_processing_molmo2 import arange_for_pooling, batch_pixels_to_patches

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    video = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    resized = torch.nn.functional.interpolate(video, size=(378, 378), mode="bilinear", align_corners=False)
    resized = resized.round().clamp(0, 255) / 255.0
    normalized = ((resized - 0.5) / 0.5).permute(0, 2, 3, 1)
    expected = batch_pixels_to_patches(normalized, 14).numpy()
    ours = video_patches(frames, 378, 14)
    assert ours.shape == expected.shape == (shape[0], 729, 588)
    # Equal, except where float32 rounding order puts a resized value on the other side of a .5 tie
    # before the uint8 rounding: one grey level (2/255 after normalising), on a handful of values.
    diff = np.abs(ours - expected)
    assert diff.max() <= 2 / 255 + 1e-6
    assert (diff > 1e-5).mean() < 1e-4
    pooling, _, _ = arange_for_pooling(torch.arange(729).reshape(27, 27), 3, 3)
    frame_offsets = torch.arange(shape[0]).view(-1, 1, 1) * 729
    expected_pooling = torch.where(pooling >= 0, pooling + frame_offsets, pooling).reshape(-1, 9)
    np.testing.assert_array_equal(video_pooling_indices(shape[0], 27, 27), expected_pooling.numpy())


def test_frame_sampling_follows_molmo2():
    at = lambda n, fps: np.arange(n) / fps  # the presentation times of a constant-rate video
    # 10 s at 30 fps: 2 fps gives 20 frames + the one at 10 s is past the end -> 20 frames, 0.5 s apart
    idx, times = sample_frames(at(300, 30.0), max_frames=64)
    assert len(idx) == 20 and np.allclose(np.diff(times), 0.5)
    # 100 s at 25 fps: more than 64 at 2 fps -> 64 frames uniform, first and last included
    idx, times = sample_frames(at(2500, 25.0), max_frames=64)
    assert len(idx) == 64 and idx[0] == 0 and idx[-1] == 2499
    # a 1 fps video is taken whole, each frame once; start/end clip it
    idx, _ = sample_frames(at(12, 1.0), max_frames=64)
    np.testing.assert_array_equal(idx, np.arange(12))
    idx, times = sample_frames(at(300, 30.0), max_frames=64, start=2.0, end=4.0)
    np.testing.assert_allclose(times, [2.0, 2.5, 3.0, 3.5, 4.0])
    # a variable rate: each sample is the frame on screen then (shown at or before it)
    idx, times = sample_frames([0, 0.2, 1.0, 1.1, 1.39, 3.0, 5.0, 5.05], max_frames=64)
    np.testing.assert_array_equal(idx, [0, 1, 2, 4, 5, 6])
    with pytest.raises(ValueError, match="holds no frame"):
        sample_frames(at(30, 30.0), 8, start=5.0)
