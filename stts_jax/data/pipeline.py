"""The grain input pipeline: TFDS array_record source -> shuffle/repeat -> Molmo2 preprocessing ->
LLM sequence packing counted after pruning -> batches in the model's packing contract.

Rows pack several examples (first-fit, `grain.experimental.FirstFitPackIterDataset`) under three
budgets at once: `llm_seq_len` tokens *after* pruning at the configured ratio (what the LLM runs on),
`input_seq_len` tokens before it, and `max_frames` frame slots. Packed features come back with
`*_segment_ids` / `*_positions`, which are the model's `segment_ids` / `positions` for tokens and its
`frame_video_ids` for frames. Pixels stay uint8 on the host; `to_model_batch` normalises them.
The iterator's state (`get_state` / `set_state`) is what the checkpoint stores.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
from grain.experimental import FirstFitPackIterDataset
from tokenizers import Tokenizer

from stts_jax.data.frames import normalize, patchify, resize
from stts_jax.data.prompt import video_prompt
from stts_jax.data.subtitles import decode_track
from stts_jax.errors import ConfigError, DataError
from stts_jax.models.config import Molmo2Config
from stts_jax.stts import budget
from stts_jax.vlm.model import RowLayout, VideoBatch
from stts_jax.windows import windows_per_frame

log = logging.getLogger(__name__)
SKIP_WARNINGS = 20  # skip warnings shown one by one; then every 1000th, with the counts


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    batch_size: int = 2  # rows per batch on this host
    max_frames: int = 16  # frame slots per row (and at most per example)
    llm_seq_len: int = 512  # LLM tokens per row after pruning
    prune_ratio: float = 0.0  # the ratio the model prunes at, to count post-pruning lengths
    max_videos_per_row: int = 2  # examples packed in one row
    packing_bins: int = 4  # rows filled at once by first-fit
    seed: int = 0
    shuffle: bool = True
    repeat: bool = True
    strict: bool = False  # raise on an unusable example instead of skipping and counting it
    answer_format: str = "letter"  # multiple choice answered with the option's "letter" or its words ("option")
    worker_count: int = 0  # grain worker processes that prefetch batches (0: in this process; skip
    # counters in `Preprocess.skipped` then live in the workers, which log each skip)
    worker_buffer_size: int = 2  # batches each worker prepares ahead

    def __post_init__(self):
        for name in (
            "batch_size",
            "max_frames",
            "llm_seq_len",
            "max_videos_per_row",
            "packing_bins",
            "worker_buffer_size",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name} {getattr(self, name)} must be >= 1.")
        if not 0.0 <= self.prune_ratio < 1.0:
            raise ConfigError(f"data.prune_ratio {self.prune_ratio} must be in [0, 1).")
        if self.worker_count < 0:
            raise ConfigError(f"data.worker_count {self.worker_count} must be >= 0 (0: no worker processes).")

    @property
    def layout(self) -> RowLayout:
        """The static shape of the rows this pipeline packs, as the model reads it from each batch."""
        return RowLayout(self.llm_seq_len, self.max_videos_per_row)


def input_seq_len(cfg: Molmo2Config, p: PipelineConfig) -> int:
    """Tokens per row before pruning: anything that fits `llm_seq_len` after pruning fits this."""
    return p.llm_seq_len + budget.pruned_windows(p.max_frames, windows_per_frame(cfg), p.prune_ratio)


class Preprocess:
    """One stored example -> model features, or None (counted, logged) if it cannot be used."""

    def __init__(
        self, model_cfg: Molmo2Config, pipeline: PipelineConfig, tokenizer: Tokenizer, examples: int | None = None
    ):
        self.cfg, self.p, self.tokenizer = model_cfg, pipeline, tokenizer
        self.windows = windows_per_frame(model_cfg)
        self.skipped: Counter = Counter()
        self.examples = examples  # in the source: that many skips in a row are a whole pass without one
        self.in_a_row = 0

    def _skip(self, example: dict, kind: str, message: str) -> None:
        name = example["id"].decode() if isinstance(example["id"], bytes) else example["id"]
        if self.p.strict:
            raise ValueError(f"example {name}: {message} (strict mode; strict=False skips and counts)")
        self.skipped[kind] += 1
        self.in_a_row += 1
        total = sum(self.skipped.values())
        if total <= SKIP_WARNINGS or total % 1000 == 0:
            log.warning("skipping example %s: %s (%d skipped so far: %s)", name, message, total, dict(self.skipped))
        if self.examples is not None and self.in_a_row >= self.examples:
            raise DataError(
                f"none of the {self.examples} examples can be used (skipped: {dict(self.skipped)}; last: {message}); "
                "check data.llm_seq_len, data.max_frames and the data itself.",
                "no usable example",
            )

    def frames(self, example: dict) -> tuple[np.ndarray, list[float]]:
        """The example's frames [T, H, W, 3] and timestamps; the `fewer_frames` baseline keeps
        uniformly spread frames (first and last included) for the vision-token budget of ratio k."""
        frames, times = example["video"], example["timestamps"]
        if self.cfg.stts.method == "fewer_frames":
            count = budget.fewer_frames(len(frames), self.windows, self.cfg.stts.prune_ratio)
            keep = np.round(np.linspace(0, len(frames) - 1, count)).astype(np.int64)
            frames, times = frames[keep], times[keep]
        return frames, [float(t) for t in times]

    def prompt(self, example: dict, times: list[float], with_answer: bool = True) -> dict:
        """Token ids and answer targets of the example's prompt (without the answer for evaluation); a manifest
        example's subtitles are shown for the frames at `times`, the ones the prompt prints."""
        options = [as_text(o) for o in example["options"]]
        answer = int(example["answer"]) if options else as_text(example["answer_text"])
        question = as_text(example["question"])
        subtitles = decode_track(as_text(example["subtitles"])) if "subtitles" in example else ()
        return video_prompt(
            self.tokenizer,
            self.cfg,
            times,
            self.windows,
            question,
            options,
            answer if with_answer else None,
            self.p.answer_format,
            subtitles,
        )

    def __call__(self, example: dict) -> dict | None:
        features = self._features(example)
        if features is not None:
            self.in_a_row = 0
        return features

    def _features(self, example: dict) -> dict | None:
        if "error" in example:  # a video the on-the-fly source could not use
            self._skip(example, *example["error"])
            return None
        frames, times = self.frames(example)
        if len(frames) > self.p.max_frames:
            self._skip(example, "too many frames", f"{len(frames)} frames > max_frames {self.p.max_frames}")
            return None
        prompt = self.prompt(example, times)
        length = len(prompt["input_ids"]) - budget.pruned_windows(len(frames), self.windows, self.p.prune_ratio)
        if length > self.p.llm_seq_len:
            self._skip(example, "too long", f"{length} tokens after pruning > llm_seq_len {self.p.llm_seq_len}")
            return None
        v = self.cfg.vision
        return {
            "input_ids": prompt["input_ids"],
            "targets": prompt["targets"],
            "pixels": patchify(resize(frames, v.image_size[0]), v.patch_size),
            "llm_tokens": np.ones(length, np.int32),  # occupies the post-pruning budget
        }


def as_text(x) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def make_dataset(
    source: Any,
    model_cfg: Molmo2Config,
    pipeline: PipelineConfig,
    tokenizer: Tokenizer,
    shard_index: int | None = None,
    shard_count: int | None = None,
) -> tuple[grain.IterDataset, Preprocess]:
    """Batches of packed rows from a random-access `source` (e.g. `tfds.data_source(...)`).

    Each host reads its own shard of the source (default: `jax.process_index()` of
    `jax.process_count()`), so hosts never see the same example in an epoch.
    """
    if model_cfg.vision.image_size[0] != model_cfg.vision.image_size[1]:
        raise ValueError("Molmo2 frames are square; vision.image_size must have equal sides.")
    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
    ds = grain.MapDataset.source(source)[shard_index::shard_count].seed(pipeline.seed)
    preprocess = Preprocess(model_cfg, pipeline, tokenizer, examples=len(ds))
    if pipeline.shuffle:
        ds = ds.shuffle()
    if pipeline.repeat:
        ds = ds.repeat()
    ds = ds.map(preprocess).filter(lambda x: x is not None).to_iter_dataset()
    tokens = input_seq_len(model_cfg, pipeline)
    ds = FirstFitPackIterDataset(
        ds,
        length_struct={
            "input_ids": tokens,
            "targets": tokens,
            "pixels": pipeline.max_frames,
            "llm_tokens": pipeline.llm_seq_len,
        },
        num_packing_bins=pipeline.packing_bins,
        seed=pipeline.seed,
        shuffle_bins=pipeline.shuffle,
        max_sequences_per_bin=pipeline.max_videos_per_row,
    )
    ds = ds.batch(pipeline.batch_size, drop_remainder=True)
    if pipeline.worker_count > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; outside an absl app, defaults
            flags.FLAGS.mark_as_parsed()
        options = grain.MultiprocessingOptions(pipeline.worker_count, pipeline.worker_buffer_size)
        ds = ds.mp_prefetch(options)
    return ds, preprocess


def to_model_batch(batch: dict, model_cfg: Molmo2Config, layout: RowLayout) -> tuple[VideoBatch, jnp.ndarray]:
    """A packed host batch (rows of `layout`, `PipelineConfig.layout`) -> (VideoBatch, targets [batch, seq]);
    pixels normalised here (on device)."""
    video = VideoBatch.of_frames(
        model_cfg,
        batch["input_ids"],
        batch["input_ids_segment_ids"],
        batch["input_ids_positions"],
        normalize(jnp.asarray(batch["pixels"])),
        batch["pixels_segment_ids"],
        layout,
    )
    return video, jnp.asarray(batch["targets"])
