"""Video decoding in bounded memory, frames chosen by presentation timestamp.

`decode_video` reads a file in two passes. The first demuxes packets without decoding them and
records each frame's presentation time (so variable frame rates and raw streams are timed by the
file itself, not by an average rate). The second decodes only what the sampled frames need: it
seeks to the keyframe before each one and decodes forward from there, so memory holds one frame at
a time plus the kept ones, and time grows with the frames kept rather than with the video's length.
A stream without timestamps (a raw H.264 file) is decoded sequentially, still one frame at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator

import av
import numpy as np

from stts_jax.data.frames import resize, sample_frames
from stts_jax.errors import DataError


@dataclasses.dataclass(frozen=True)
class FrameIndex:
    """Every frame of a video stream, in presentation order.

    times: [n] seconds from the first frame; pts: [n] the stream's timestamps (None: the stream has
    none, frames are counted in decode output order); keyframes: sorted pts of the keyframes.
    """

    times: np.ndarray
    pts: np.ndarray | None
    keyframes: np.ndarray


def index_frames(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> FrameIndex:
    """One demux pass over `stream` (no decoding) -> its FrameIndex."""
    pts, keyframes, durations = [], [], []
    for packet in container.demux(stream):
        if packet.size == 0:  # the demuxer's end-of-stream packet
            continue
        pts.append(packet.pts)
        durations.append(packet.duration or 0)
        if packet.is_keyframe and packet.pts is not None:
            keyframes.append(packet.pts)
    if not pts:
        raise DataError("the video stream holds no frames", "no frames")
    base = float(stream.time_base) if stream.time_base else 0.0
    if all(p is not None for p in pts):
        ordered = np.unique(np.asarray(pts, np.int64))  # presentation order
        return FrameIndex((ordered - ordered[0]) * base, ordered, np.unique(np.asarray(keyframes, np.int64)))
    # A raw elementary stream: no timestamps; the parser's packet durations (from the stream's own
    # timing information), else the rate the decoder reads from the stream.
    if base and all(d > 0 for d in durations):
        times = np.concatenate([[0.0], np.cumsum(durations[:-1])]) * base
    else:
        rate = stream.codec_context.framerate or stream.guessed_rate
        if not rate:
            raise DataError("the stream has neither timestamps nor a frame rate", "unreadable video")
        times = np.arange(len(pts)) / float(rate)
    return FrameIndex(np.asarray(times, np.float64), None, np.zeros(0, np.int64))


@contextlib.contextmanager
def _open(path: str) -> Iterator[av.container.InputContainer]:
    """The container of a local path, or of gs://, s3://, http(s):// through a seekable fsspec file."""
    if "://" not in path:
        with av.open(path) as container:
            yield container
        return
    import fsspec

    with fsspec.open(path, "rb") as file, av.open(file) as container:
        yield container


def _video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    if container.format.name == "image2" or container.format.name.endswith("_pipe"):
        raise DataError(f"the file is a still image ({container.format.name}), not a video", "not a video")
    if not container.streams.video:
        raise DataError("the container holds no video stream", "no frames")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return stream


def _rgb(frame: av.VideoFrame, size: int | None) -> np.ndarray:
    """A decoded frame -> [H, W, 3] uint8 as displayed (rotation metadata applied), resized to
    size x size as Molmo2 resizes (`frames.resize`) when `size` is given."""
    image = frame.to_ndarray(format="rgb24")
    turns = round((frame.rotation or 0) / 90) % 4  # the display matrix's counter-clockwise rotation
    if turns:
        image = np.ascontiguousarray(np.rot90(image, turns))
    return image if size is None else resize(image[None], size)[0]


def _seek_and_take(
    container, stream, targets: np.ndarray, keyframes: np.ndarray, size: int | None
) -> Iterator[tuple[int, np.ndarray]]:
    """(pts, image) of the frame on screen at each target pts (sorted), decoding only from the keyframe
    before each target; targets in the group of pictures being decoded continue its decode."""
    frames: Iterator | None = None
    goal = [0]  # the target being decoded towards (read by `_decoded` as it feeds packets)
    on_screen = ahead = None  # the last decoded frame at or before the target; the one decoded after it
    for target in targets:
        goal[0] = target
        at = np.searchsorted(keyframes, target, side="right") - 1
        decoded = ahead or on_screen
        if frames is None or decoded is None or (at >= 0 and keyframes[at] > decoded.pts):
            frames, on_screen, ahead = _seek(container, stream, keyframes, at, goal), None, None
        while True:
            frame, ahead = ahead or next(frames, None), None
            if frame is None:  # the end of the stream: the last frame stays on screen
                break
            if frame.pts > target:
                ahead = frame
                break
            on_screen = frame
            if frame.pts == target:
                break
        if on_screen is None:
            raise DataError(f"no frame is on screen at pts {target}", "unreadable video")
        yield on_screen.pts, _rgb(on_screen, size)


def _decoded(container, stream, goal: list[int]) -> Iterator:
    """Frames decoded from the container's position on. A packet shown before `goal[0]` is decoded only
    if other frames refer to it (skip_frame NONREF): such a frame is neither the target nor needed for
    it, and skipping it saves about half the decoding of a group of pictures with B-frames."""
    codec = stream.codec_context
    for packet in container.demux(stream):
        early = packet.pts is not None and packet.pts < goal[0]
        codec.skip_frame = "NONREF" if early else "DEFAULT"
        for frame in codec.decode(packet if packet.size else None):
            if frame.pts is not None:
                yield frame


def _seek(container, stream, keyframes: np.ndarray, at: int, goal: list[int]) -> Iterator:
    """Decoded frames from the keyframe `keyframes[at]` (or the start) on; steps back one keyframe at a
    time while the decoder lands after the target (open groups of pictures, coarse seeking)."""
    while True:
        container.seek(int(keyframes[at]) if at >= 0 else 0, stream=stream, backward=True, any_frame=False)
        frames = _decoded(container, stream, goal)
        first = next(frames, None)
        if first is None:
            raise DataError("no frame could be decoded after seeking", "unreadable video")
        if first.pts <= goal[0] or at < 0:
            return _chain(first, frames)
        at -= 1


def _chain(first, rest) -> Iterator:
    yield first
    yield from rest


def _sequential(container, stream, wanted: np.ndarray, size: int | None) -> Iterator[tuple[int, np.ndarray]]:
    """(index, image) of the `wanted` output frames (sorted indices) of a stream without timestamps."""
    position, targets = 0, iter(wanted)
    target = next(targets, None)
    for index, frame in enumerate(container.decode(stream)):
        position = index
        if index == target:
            yield index, _rgb(frame, size)
            target = next(targets, None)
            if target is None:
                return
    raise DataError(f"the stream ended after {position + 1} frames, before frame {target}", "unreadable video")


def decode_video(
    path: str,
    max_frames: int,
    max_fps: float,
    start: float | None = None,
    end: float | None = None,
    size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The frames Molmo2 samples from a video file -> (frames [T, H, W, 3] uint8, timestamps [T] s).

    At most `max_fps` frames per second of [start, end] (seconds from the first frame), at most
    `max_frames` spread uniformly with the last included (`frames.sample_frames`); each returned frame
    is the one on screen at its returned timestamp, shown as the file's rotation metadata says. With
    `size`, each frame is resized to size x size as it is decoded (Molmo2's resize), so memory holds
    the kept frames at model resolution only. Raises DataError (with a skip-counter `kind`) for a
    missing, unreadable or empty file or clip.
    """
    if "://" not in path and not os.path.exists(path):
        raise DataError(f"{path}: file not found", "missing file")
    try:
        with _open(path) as container:
            index = index_frames(container, _video_stream(container))
        try:
            chosen, _ = sample_frames(index.times, max_frames, max_fps, start, end)
        except ValueError as e:
            raise DataError(str(e), "empty clip") from e
        frames, times = None, np.zeros(len(chosen), np.float64)
        with _open(path) as container:
            stream = _video_stream(container)
            if index.pts is None:
                taken = _sequential(container, stream, chosen, size)
            else:
                taken = _seek_and_take(container, stream, index.pts[chosen], index.keyframes, size)
            for i, (position, image) in enumerate(taken):
                if frames is None:  # filled in place: the kept frames are held once
                    frames = np.empty((len(chosen), *image.shape), np.uint8)
                frames[i] = image
                if index.pts is None:
                    times[i] = index.times[position]
                else:
                    times[i] = (position - index.pts[0]) * float(stream.time_base)
    except DataError as e:
        raise DataError(f"{path}: {e}", e.kind) from e
    except FileNotFoundError as e:  # a remote path (local ones are checked above)
        raise DataError(f"{path}: file not found", "missing file") from e
    except Exception as e:  # PyAV raises many error types for corrupt, truncated or non-video files
        raise DataError(f"{path}: cannot be decoded ({type(e).__name__}: {e})", "unreadable video") from e
    return frames, times.astype(np.float32)
