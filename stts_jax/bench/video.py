"""Video decoding and host preprocessing per CPU core, for both data modes, on realistic files.

`python -m stts_jax.bench video [--videos DIR] [--long]` writes (once, into DIR) H.264 1080p30 files of
10 minutes (and with --long one hour), a VP9 720p webm and a variable-frame-rate H.264 clip, all of a
camera panning over a photograph, and measures, each in a fresh process pinned to one core:
  build: decode_video of 64 frames at the model's 378 px + JPEG storage (what a build does per clip; the
    JPEG's PSNR against the decoded frames);
  stored: reading a stored clip (JPEG decode) + patchify (what a training step's input costs per video);
  on the fly: decode_video + patchify (what a training step's input costs per video without a build);
with each one's peak resident memory. The last column is the cores a host needs for the input of the
Molmo2-4B v5p-16 step (64 videos per host per 23.37 s step, BENCHMARKS.md "TPU ahead of time").
"""

from __future__ import annotations

import argparse
import fractions
import json
import os
import subprocess
import sys

import av
import numpy as np

from stts_jax.bench import report

VIDEOS_PER_HOST_SECOND = 64 / 23.37  # Molmo2-4B at k = 0.5 on v5p-16: 64 videos per host per 23.37 s step
IMAGE_SIZE, PATCH = 378, 14  # Molmo2's frames

FILES = {  # name -> codec, container format, (height, width), fps or None (variable), seconds
    "h264_1080p30_10min.mp4": ("libx264", "mp4", (1080, 1920), 30, 600),
    "h264_1080p30_60min.mp4": ("libx264", "mp4", (1080, 1920), 30, 3600),
    "vp9_720p24_2min.webm": ("libvpx-vp9", "webm", (720, 1280), 24, 120),
    "h264_480p_vfr_3min.mp4": ("libx264", "mp4", (480, 854), None, 180),
}


def scene(height: int, width: int) -> np.ndarray:
    """A photograph (matplotlib's bundled sample, Grace Hopper) resized to [height, width, 3]: the
    detail and smoothness of a real picture, for realistic compression."""
    from matplotlib import cbook
    from PIL import Image

    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as photo:
        return np.asarray(photo.convert("RGB").resize((width, height), Image.Resampling.BICUBIC))


def write(path: str, codec: str, fmt: str, size: tuple[int, int], fps: int | None, seconds: int) -> None:
    """A camera panning over a photograph (`scene`) with sensor noise, encoded at the bitrate video sites
    stream at (x264 `veryfast`, with B-frames and CABAC; VP9 realtime). fps None: frames at irregular times
    (between 1/60 and 1/10 s apart), timestamps in milliseconds."""
    h, w = size
    rng = np.random.default_rng(0)
    texture = scene(h, 2 * w).astype(np.int16)
    grain = rng.integers(-4, 5, (16, h, w, 3), dtype=np.int16)  # sensor noise, cycled: a camera's bitrate
    options = {"preset": "veryfast"} if codec == "libx264" else {"deadline": "realtime", "cpu-used": "8"}
    with av.open(path, "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=fps or 1000, options=options)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.bit_rate = round(2.5 * h * w)  # 5.2 Mb/s at 1080p, 2.3 at 720p: what sites stream at
        if fps is None:
            stream.codec_context.time_base = fractions.Fraction(1, 1000)
        t, i = 0.0, 0
        while t < seconds:
            x = int((w - 1) * (0.5 - 0.5 * np.cos(2 * np.pi * t / 40)))  # pans back and forth every 40 s
            image = np.clip(texture[:h, x : x + w] + grain[i % len(grain)], 0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if fps is None:
                frame.pts, frame.time_base = round(t * 1000), fractions.Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
            i += 1
            t = i / fps if fps else t + float(rng.uniform(1 / 60, 1 / 10))
        for packet in stream.encode():
            container.mux(packet)


MEASURE = """
import json, os, sys, time
os.sched_setaffinity(0, {0})  # one core
from stts_jax.data import decode_video
from stts_jax.data.clips import ClipSettings, decode_clip, encode_clip
from stts_jax.data.frames import patchify
path, size, patch, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
timed = {}
def clock(name, fn):
    best = None
    for _ in range(repeats):
        start = time.perf_counter(); out = fn(); seconds = time.perf_counter() - start
        best = seconds if best is None else min(best, seconds)
    timed[name] = best
    return out
frames, times = clock("decode", lambda: decode_video(path, 64, 2.0, size=size))
record = clock("encode", lambda: encode_clip(frames, times, ClipSettings(image_size=size)))
clock("stored", lambda: patchify(decode_clip(record)[0], patch))
clock("patchify", lambda: patchify(frames, patch))
import numpy as np
error = decode_clip(record)[0].astype(np.float64) - frames
timed["jpeg_mean_abs_error"] = float(np.abs(error).mean())
timed["jpeg_psnr_db"] = float(10 * np.log10(255.0**2 / max((error**2).mean(), 1e-12)))
# VmHWM, not ru_maxrss: the latter keeps the high-water mark of the forking process across exec
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) / 1024
timed.update(frames=len(frames), clip_bytes=len(record), rss_mib=peak)
print(json.dumps(timed))
"""


def measure(path: str, repeats: int) -> dict:
    run = subprocess.run(
        [sys.executable, "-c", MEASURE, path, str(IMAGE_SIZE), str(PATCH), str(repeats)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(run.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stts_jax.bench video", description=__doc__.splitlines()[0])
    parser.add_argument("--videos", default="/tmp/stts_jax_bench_videos", help="where the test videos are kept")
    parser.add_argument("--long", action="store_true", help="also the one-hour 1080p file (about 1 h to encode)")
    parser.add_argument("--repeats", type=int, default=3, help="timings per measurement (the best is kept)")
    parser.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args(argv)
    os.makedirs(args.videos, exist_ok=True)
    rows = []
    for name, spec in FILES.items():
        if "60min" in name and not args.long:
            continue
        path = os.path.join(args.videos, name)
        if not os.path.exists(path):
            print(f"writing {path} ...", flush=True)
            write(path + ".part", *spec)
            os.replace(path + ".part", path)
        m = measure(path, args.repeats)
        stored, on_the_fly = m["stored"], m["decode"] + m["patchify"]
        rows.append(
            {
                "file": name,
                "megabytes": os.path.getsize(path) / 1e6,
                "build_s": m["decode"] + m["encode"],
                "stored_s": stored,
                "on_the_fly_s": on_the_fly,
                "clip_megabytes": m["clip_bytes"] / 1e6,
                "jpeg_mean_abs_error": m["jpeg_mean_abs_error"],
                "jpeg_psnr_db": m["jpeg_psnr_db"],
                "frames": m["frames"],
                "rss_mib": m["rss_mib"],
                "cores_stored": VIDEOS_PER_HOST_SECOND * stored,
                "cores_on_the_fly": VIDEOS_PER_HOST_SECOND * on_the_fly,
                "device": report.device_name(),
            }
        )
    report.write_json(rows, args.json)
    report.print_table(
        rows,
        [
            ("file", "<", lambda r: r["file"]),
            ("MB", ">", report.number("megabytes", ".0f")),
            ("build s/clip", ">", report.number("build_s", ".2f")),
            ("stored MB/clip", ">", report.number("clip_megabytes", ".2f")),
            ("JPEG PSNR dB", ">", report.number("jpeg_psnr_db", ".1f")),
            ("stored s/video", ">", report.number("stored_s", ".3f")),
            ("on-the-fly s/video", ">", report.number("on_the_fly_s", ".2f")),
            ("peak MiB", ">", report.number("rss_mib", ".0f")),
            ("cores/host stored", ">", report.number("cores_stored", ".2f")),
            ("cores/host on the fly", ">", report.number("cores_on_the_fly", ".1f")),
        ],
    )
    print(f"one process pinned to one core of: {report.device_name()}; 64 frames at {IMAGE_SIZE} px per video")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
