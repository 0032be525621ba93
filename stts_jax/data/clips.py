"""Stored clips: a video's sampled frames at model resolution, each frame compressed on its own (JPEG, or
lossless PNG), with their timestamps, in one self-describing record (an `.npz` of plain arrays)."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image

from stts_jax.data.manifest import Clip
from stts_jax.data.video import decode_video
from stts_jax.errors import DataError

ENCODINGS = ("jpeg", "png")


@dataclasses.dataclass(frozen=True)
class ClipSettings:
    """How clips are sampled and stored: part of a built dataset's identity."""

    max_frames: int = 64
    max_fps: float = 2.0
    image_size: int = 378  # frames stored resized to image_size x image_size (the model's input)
    encoding: str = "jpeg"  # jpeg | png (lossless)
    jpeg_quality: int = 95

    def __post_init__(self):
        if self.encoding not in ENCODINGS:
            raise ValueError(f"frame encoding {self.encoding!r}: choose one of {ENCODINGS}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality {self.jpeg_quality} must be in 1..100")


def _encode_frame(frame: np.ndarray, settings: ClipSettings) -> bytes:
    out = io.BytesIO()
    image = Image.fromarray(frame)
    if settings.encoding == "jpeg":
        image.save(out, format="JPEG", quality=settings.jpeg_quality, subsampling=0)  # 4:4:4: no chroma halving
    else:
        image.save(out, format="PNG", compress_level=6)
    return out.getvalue()


def encode_clip(frames: np.ndarray, timestamps: np.ndarray, settings: ClipSettings) -> bytes:
    """frames [T, H, W, 3] uint8 + timestamps [T] -> one record."""
    encoded = [_encode_frame(f, settings) for f in frames]
    out = io.BytesIO()
    np.savez(
        out,
        timestamps=np.asarray(timestamps, np.float32),
        offsets=np.cumsum([0] + [len(e) for e in encoded]).astype(np.int64),
        data=np.frombuffer(b"".join(encoded), np.uint8),
    )
    return out.getvalue()


def decode_clip(record: bytes) -> tuple[np.ndarray, np.ndarray]:
    """One record -> (frames [T, H, W, 3] uint8, timestamps [T] float32)."""
    with np.load(io.BytesIO(record), allow_pickle=False) as z:
        timestamps, offsets, data = z["timestamps"], z["offsets"], z["data"]
    frames = [
        np.asarray(Image.open(io.BytesIO(data[a:b].tobytes())).convert("RGB"))
        for a, b in zip(offsets[:-1], offsets[1:], strict=True)
    ]
    return np.stack(frames), timestamps


def load_clip(clip: Clip, settings: ClipSettings) -> tuple[np.ndarray, np.ndarray]:
    """Decode a clip's sampled frames from its video file, resized to the model's input size."""
    return decode_video(clip.path, settings.max_frames, settings.max_fps, clip.start, clip.end, settings.image_size)


def build_clip(job: tuple[Clip, ClipSettings]) -> tuple[bytes | None, tuple[str, str] | None]:
    """A worker's job: (record, None), or (None, (kind, message)) when the clip cannot be used."""
    clip, settings = job
    try:
        return encode_clip(*load_clip(clip, settings), settings), None
    except DataError as e:
        return None, (e.kind, str(e))
