"""decode_video against an independent decode: every frame of the file decoded in order (PyAV, no
seeking, no sampling), the frame on screen at each returned timestamp looked up there."""

from __future__ import annotations

import fractions

import av
import numpy as np
import pytest

from stts_jax.data import decode_video
from stts_jax.errors import DataError


def write_video(path, times, size=(48, 64), codec="libx264", fmt=None, gop=12, rate=None, rotation=None):
    """Frames shown at `times` (seconds); frame i is a flat grey (37 i mod 256) with a bright square at a
    place that moves with i, so frames differ everywhere the decoder could confuse them."""
    h, w = size
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate or 25)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.gop_size = gop
        if rate is None:  # explicit timestamps in milliseconds
            stream.codec_context.time_base = fractions.Fraction(1, 1000)
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i, t in enumerate(times):
            image = np.full((h, w, 3), (37 * i) % 256, np.uint8)
            y, x = (5 * i) % (h - 8), (7 * i) % (w - 8)
            image[y : y + 8, x : x + 8] = 255 - image[0, 0]
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if rate is None:
                frame.pts, frame.time_base = round(t * 1000), fractions.Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def full_decode(path, rate=None):
    """Every frame in presentation order -> (times [n] from the first frame, images [n, H, W, 3])."""
    with av.open(str(path)) as container:
        frames = [(f.time, f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
    if rate is not None:  # a raw stream: no timestamps; frames at the rate it was written at
        times = np.arange(len(frames)) / rate
    else:
        times = np.asarray([t for t, _ in frames])
        times = times - times[0]
    return times, np.stack([image for _, image in frames])


def assert_on_screen(path, frames, timestamps, rate=None):
    times, images = full_decode(path, rate)
    for frame, t in zip(frames, timestamps, strict=True):
        shown = np.searchsorted(times, t + 1e-4, side="right") - 1
        assert abs(times[shown] - t) < 1e-4, f"{t} s is not a frame's timestamp (nearest {times[shown]})"
        np.testing.assert_array_equal(frame, images[shown], err_msg=f"frame at {t} s")


def test_constant_rate_with_b_frames_and_short_gops(tmp_path):
    path = tmp_path / "cfr.mp4"
    write_video(path, np.arange(300) / 30, rate=30, gop=12)  # 10 s, a keyframe every 0.4 s
    frames, timestamps = decode_video(str(path), max_frames=64, max_fps=2.0)
    np.testing.assert_allclose(timestamps, np.arange(20) * 0.5, atol=1e-6)
    assert_on_screen(path, frames, timestamps)
    # more samples than max_frames: spread uniformly, first and last frame included
    frames, timestamps = decode_video(str(path), max_frames=7, max_fps=2.0)
    assert len(frames) == 7 and timestamps[0] == 0 and abs(timestamps[-1] - 299 / 30) < 1e-6
    assert_on_screen(path, frames, timestamps)
    # a clip: [2.2, 4.1] s starts at the first frame at or after 2.2 s and ends at or before 4.1 s
    frames, timestamps = decode_video(str(path), max_frames=64, max_fps=2.0, start=2.2, end=4.1)
    np.testing.assert_allclose(timestamps, [2.2, 2.7, 3.2, 3.7], atol=1e-6)
    assert_on_screen(path, frames, timestamps)


def test_variable_rate_timestamps_are_the_frames_own(tmp_path):
    """A frame shown at 5.0 s is stamped 5.0 s (an average-rate index stamped it 4.85 s), and the
    sample at 1.5 s is the frame still on screen then (shown at 1.39 s)."""
    path = tmp_path / "vfr.mp4"
    write_video(path, [0, 0.2, 1.0, 1.1, 1.39, 3.0, 5.0, 5.05])
    frames, timestamps = decode_video(str(path), max_frames=64, max_fps=2.0)
    np.testing.assert_allclose(timestamps, [0, 0.2, 1.0, 1.39, 3.0, 5.0], atol=1e-6)
    assert_on_screen(path, frames, timestamps)


def test_raw_h264_stream_is_timed_by_its_own_rate(tmp_path):
    """An elementary stream has no timestamps; FFmpeg's demuxer guesses 25 fps, the stream says 8."""
    path = tmp_path / "eight_fps.h264"
    write_video(path, np.arange(16) / 8, codec="libx264", fmt="h264", rate=8)
    frames, timestamps = decode_video(str(path), max_frames=64, max_fps=2.0)
    np.testing.assert_allclose(timestamps, [0, 0.5, 1.0, 1.5], atol=1e-6)
    assert_on_screen(path, frames, timestamps, rate=8)


def test_vp9_webm(tmp_path):
    path = tmp_path / "clip.webm"
    write_video(path, np.arange(72) / 24, codec="libvpx-vp9", rate=24, gop=24)
    frames, timestamps = decode_video(str(path), max_frames=64, max_fps=2.0)
    np.testing.assert_allclose(timestamps, np.arange(6) * 0.5, atol=1e-3)
    assert_on_screen(path, frames, timestamps)


def test_rotation_metadata_is_applied(tmp_path):
    """A stream marked as rotated 90 degrees counter-clockwise (how a phone held upright stores it)
    comes out as displayed: [W, H] frames, the stored image turned."""
    path = tmp_path / "rotated.mp4"
    write_video(path, np.arange(10) / 5, rate=5, rotation=90)
    frames, timestamps = decode_video(str(path), max_frames=64, max_fps=2.0)
    times, images = full_decode(path)  # stored orientation
    assert frames.shape[1:] == (64, 48, 3)
    for frame, t in zip(frames, timestamps, strict=True):
        np.testing.assert_array_equal(frame, np.rot90(images[np.argmin(np.abs(times - t))]))


def test_resizing_while_decoding_equals_resizing_after(tmp_path):
    from stts_jax.data.frames import resize

    path = tmp_path / "cfr.mp4"
    write_video(path, np.arange(40) / 10, rate=10)
    full, _ = decode_video(str(path), max_frames=64, max_fps=2.0)
    small, _ = decode_video(str(path), max_frames=64, max_fps=2.0, size=28)
    np.testing.assert_array_equal(small, resize(full, 28))


def test_bad_files_raise_one_clear_error_with_a_kind(tmp_path):
    (tmp_path / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated")
    cases = {"nowhere.mp4": "missing file", "corrupt.mp4": "unreadable video"}
    for name, kind in cases.items():
        with pytest.raises(DataError, match=name) as error:
            decode_video(str(tmp_path / name), 8, 2.0)
        assert error.value.kind == kind
    write_video(tmp_path / "short.mp4", np.arange(10) / 10, rate=10)
    with pytest.raises(DataError, match="holds no frame") as error:
        decode_video(str(tmp_path / "short.mp4"), 8, 2.0, start=5.0)
    assert error.value.kind == "empty clip"


def write_long_video(path, seconds: int, fps: int, size=(1080, 1920), gop=250):
    """A long H.264 video, cheap to encode: a grey field with a bright block that moves every frame
    (x264 `ultrafast`; frames built as YUV planes, not converted from RGB)."""
    h, w = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "g": str(gop)})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        planes = np.full((h * 3 // 2, w), 128, np.uint8)
        for i in range(seconds * fps):
            y, x = (16 * i) % (h - 64), (24 * i) % (w - 64)
            planes[:h] = 90
            planes[y : y + 64, x : x + 64] = 235
            for packet in stream.encode(av.VideoFrame.from_ndarray(planes, format="yuv420p")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


MEMORY = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))  # a decoder that keeps every frame fails here
from stts_jax.data import decode_video
frames, times = decode_video(sys.argv[1], 64, 2.0)
# VmHWM, not ru_maxrss: the latter keeps the high-water mark of the (large) forking process across exec
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(len(frames), frames.shape[1], frames.shape[2], float(times[-1]), peak)
"""


def decode_in_a_process(path) -> tuple[int, int, int, float, float]:
    """(frames, height, width, last timestamp, peak resident MiB) of decode_video in a fresh process."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", MEMORY, str(path)], capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stderr[-3000:]
    count, height, width, last, rss_kib = run.stdout.split()[-5:]
    return int(count), int(height), int(width), float(last), int(rss_kib) / 1024


@pytest.mark.parametrize(
    "minutes,fps",
    [(10, 5), pytest.param(60, 30, marks=pytest.mark.slow, id="one hour at 30 fps (slow: 5 min to encode)")],
)
def test_long_1080p_video_decodes_in_bounded_memory(tmp_path, minutes, fps):
    """64 frames from a long 1080p H.264 file: 64 decoded 1080p frames are 400 MB, while every frame of
    ten minutes at 5 fps is 19 GB (a decoder that keeps them all fails under the 8 GB address-space limit)."""
    path = tmp_path / "long.mp4"
    write_long_video(path, minutes * 60, fps)
    count, height, width, last, rss = decode_in_a_process(path)
    assert (count, height, width) == (64, 1080, 1920)
    assert abs(last - (minutes * 60 - 1 / fps)) < 1e-3  # the last frame is always taken
    assert rss < 1024, f"peak resident memory {rss:.0f} MiB"
