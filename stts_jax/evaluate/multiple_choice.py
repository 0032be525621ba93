"""Multiple-choice video-QA evaluation, per question family, and test-time scaling of the frame count.

Two scoring modes, selectable: `generate` (greedy decoding with the KV cache; the generated answer,
up to <|im_end|>, must be exactly the correct option's answer) and `likelihood` (the option whose
answer tokens have the highest log-likelihood after the prompt, teacher-forced through the cache).
The answer is the option's letter (Molmo2's format) or its words (`answer_format="option"`). Both
modes read one prefill, so with single-token letters they pick the same option wherever generation
gives a letter. One example per row; pruning runs exactly as in training, with the method and ratio
of the model config, which the caller may set apart from training's.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from tokenizers import Tokenizer

from stts_jax.data.frames import normalize, patchify, resize
from stts_jax.data.pipeline import PipelineConfig, Preprocess, as_text
from stts_jax.data.prompt import answer_text, encode_answer
from stts_jax.data.sources import GENERATED
from stts_jax.data.tokenizer import token_id
from stts_jax.errors import ConfigError
from stts_jax.models.config import Molmo2Config
from stts_jax.stts import budget
from stts_jax.vlm.generate import generate_and_score
from stts_jax.vlm.model import Molmo2, VideoBatch
from stts_jax.windows import pooling_windows, windows_per_frame

SCORING = ("generate", "likelihood")


def frames_for_equal_tokens(prune_ratio: float, base_frames: int, windows: int = 81) -> int:
    """Test-time scaling (STTS.md section 7): the fewest frames whose kept vision tokens at `prune_ratio`
    reach the unpruned model's at `base_frames` (Molmo2, 64 frames: k = 0.3 / 0.4 / 0.5 -> 92 / 107 / 128)."""
    if not 0 <= prune_ratio < 1:
        raise ConfigError(f"prune_ratio {prune_ratio} must lie in [0, 1) for test-time scaling.")
    frames = base_frames
    while budget.kept_windows(frames, windows, prune_ratio) < base_frames * windows:
        frames += 1
    return frames


def scaled_frames(cfg: Molmo2Config, config: ml_collections.ConfigDict) -> int:
    """Test-time scaling of the experiment `config`'s data for the model `cfg`: the frames per video whose
    kept vision tokens at cfg's ratio reach the unpruned model's at the configured frame count, counted in
    the model's own windows per frame (81 at Molmo2 sizes, 9 for `tiny`). A method that keeps fewer tokens
    by ratio k (`fewer_frames` included) scales by k; `none` keeps the frames."""
    data = config.data
    base = data.frames if data.dataset in GENERATED else data.video_frames
    ratio = cfg.stts.prune_ratio if cfg.stts.method != "none" else 0.0
    return frames_for_equal_tokens(ratio, base, windows_per_frame(cfg))


def scaled_data(config: ml_collections.ConfigDict, frames: int | None, split: str) -> ml_collections.ConfigDict:
    """The experiment config with its `split` data sampled at `frames` frames per video (None: as is).

    Procedural videos keep their duration (the frame rate rises with the count) and only `split` is
    built; manifest videos are decoded at up to `frames` frames, into a dataset of its own name."""
    config = copy.deepcopy(config)
    data = config.data
    if frames is None:
        return config
    if data.dataset in GENERATED:
        data.fps = data.get("fps", 2.0) * frames / data.frames
        data.frames = frames
        counts = {"train": "train_examples", "validation": "eval_examples", "test": "test_examples"}
        for name, field in counts.items():
            data[field] = data[field] if name == split else 0
    else:
        data.name = f"{data.get('name', 'default')}_f{frames}"
        data.video_frames = frames
    return config


@dataclasses.dataclass
class _Example:
    index: int
    family: str
    answer: int
    options: list[list[int]]  # token ids of each option's answer (its letter or its words)
    input_ids: np.ndarray  # [L] the prompt without the answer
    pixels: np.ndarray  # [T, patches, patch_dim] uint8
    vision_tokens: int  # LLM vision tokens after pruning
    objects: np.ndarray | None  # [T, windows] bool: the window shows an asked-about object (procedural sets)


def object_windows(masks: np.ndarray, cfg: Molmo2Config, targets: np.ndarray | None = None) -> np.ndarray:
    """[T, H, W] object masks (object id, 0 = background) -> [T, windows] bool: some patch of the window,
    at the model's frame size and patch grid, overlaps an object of `targets` (ids; None: any object)."""
    t, h, w = masks.shape
    size, patch = cfg.vision.image_size[0], cfg.vision.patch_size
    ys, xs = (np.arange(size) * h) // size, (np.arange(size) * w) // size  # nearest-neighbour resize
    resized = masks[:, ys][:, :, xs]
    on = resized > 0 if targets is None else np.isin(resized, targets)
    rows, cols = cfg.vision.patch_grid
    patches = on[:, : rows * patch, : cols * patch].reshape(t, rows, patch, cols, patch).any((2, 4)).reshape(t, -1)
    windows = pooling_windows(rows, cols, *cfg.adapter.pooling_size)
    return (patches[:, np.maximum(windows, 0)] & (windows >= 0)).any(-1)


def _examples(
    source, cfg: Molmo2Config, tokenizer: Tokenizer, limit: int | None, answer_format: str = "letter"
) -> tuple[list[_Example], dict[str, int]]:
    """The examples to evaluate, and the count by kind of those whose video could not be used (skipped)."""
    pipeline = PipelineConfig(max_frames=1 << 30, llm_seq_len=1 << 30, answer_format=answer_format)
    preprocess = Preprocess(cfg, pipeline, tokenizer)
    windows = windows_per_frame(cfg)
    ratio = cfg.stts.prune_ratio if cfg.stts.prunes else 0.0
    examples = []
    for index in range(len(source) if limit is None else min(limit, len(source))):
        record = source[index]
        if "error" in record:  # a video the on-the-fly source could not use
            preprocess._skip(record, *record["error"])
            continue
        if not len(record["options"]):
            raise ValueError(f"example {index} has no options; multiple-choice evaluation needs them.")
        frames, times = preprocess.frames(record)
        options = [as_text(o) for o in record["options"]]
        prompt = preprocess.prompt(record, times, with_answer=False)
        examples.append(
            _Example(
                index=index,
                family=as_text(record.get("family", "all")),
                answer=int(record["answer"]),
                options=[encode_answer(tokenizer, answer_text(i, options, answer_format)) for i in range(len(options))],
                input_ids=prompt["input_ids"],
                pixels=patchify(resize(frames, cfg.vision.image_size[0]), cfg.vision.patch_size),
                vision_tokens=budget.kept_windows(len(frames), windows, ratio),
                objects=object_windows(record["masks"], cfg, record.get("targets")) if "masks" in record else None,
            )
        )
    return examples, dict(preprocess.skipped)


def _batch(rows: Sequence[_Example], cfg: Molmo2Config, seq_len: int, frame_slots: int) -> VideoBatch:
    """One example per row (the default `RowLayout`: one video, the LLM on the input length)."""
    b = len(rows)
    input_ids = np.zeros((b, seq_len), np.int32)
    segment_ids = np.zeros((b, seq_len), np.int32)
    pixels = np.zeros((b, frame_slots, *rows[0].pixels.shape[1:]), np.uint8)
    frame_ids = np.zeros((b, frame_slots), np.int32)
    for i, row in enumerate(rows):
        input_ids[i, : len(row.input_ids)] = row.input_ids
        segment_ids[i, : len(row.input_ids)] = 1
        pixels[i, : len(row.pixels)] = row.pixels
        frame_ids[i, : len(row.pixels)] = 1
    positions = np.broadcast_to(np.arange(seq_len, dtype=np.int32), (b, seq_len))
    return VideoBatch.of_frames(cfg, input_ids, segment_ids, positions, normalize(jnp.asarray(pixels)), frame_ids)


def evaluate(
    cfg: Molmo2Config,
    params: Any,
    source,
    tokenizer: Tokenizer,
    batch_size: int = 8,
    limit: int | None = None,
    progress: bool = True,
    answer_format: str = "letter",
) -> dict:
    """Accuracy of `params` on every example of `source` (or the first `limit`), by both modes.

    Returns {"examples", "skipped": {kind: count}, "accuracy": {mode: overall}, "families": {family:
    {"count", mode: acc}}, "vision_tokens_per_example", "frames_per_example", "predictions": [per
    example]}, and where the source has object masks and the model prunes, "kept_object_share": the
    share of object windows (frames after the first) that the pruning keeps, overall, per family and
    per example."""
    examples, skipped = _examples(source, cfg, tokenizer, limit, answer_format)
    if not examples:
        raise ValueError("the evaluation split is empty.")
    end = token_id(tokenizer, "<|im_end|>")
    num_options = max(len(e.options) for e in examples)
    answer_len = max(len(o) for e in examples for o in e.options)
    seq_len = -(-max(len(e.input_ids) for e in examples) // 16) * 16
    frame_slots = max(len(e.pixels) for e in examples)
    params = jax.device_put(params)
    predictions = []
    for start in tqdm.trange(0, len(examples), batch_size, desc="evaluate", disable=not progress):
        rows = examples[start : start + batch_size]
        padded = list(rows) + [rows[-1]] * (batch_size - len(rows))  # a fixed batch shape: one compile
        batch = _batch(padded, cfg, seq_len, frame_slots)
        candidates = np.zeros((batch_size, num_options, answer_len), np.int32)
        for i, row in enumerate(padded):
            for k, option in enumerate(row.options):
                candidates[i, k, : len(option)] = option
        tokens, scores = generate_and_score(cfg, params, batch, jnp.asarray(candidates), answer_len + 1)
        tokens, scores = np.asarray(tokens), np.asarray(scores)
        row_shares = [None] * len(rows)
        if cfg.stts.prunes and rows[0].objects is not None:
            keep = np.asarray(_keep(cfg, params, batch))
            for i, row in enumerate(rows):  # frame 0 is never pruned: count frames 1.. only
                objects = row.objects[1:]
                row_shares[i] = float(keep[i, 1 : len(row.objects)][objects].sum() / max(objects.sum(), 1))
        for i, row in enumerate(rows):
            answer = tokens[i].tolist()
            answer = answer[: answer.index(end)] if end in answer else answer
            generated = row.options.index(answer) if answer in row.options else -1
            chosen = int(np.argmax(scores[i, : len(row.options)]))
            predictions.append(
                {
                    "index": row.index,
                    "family": row.family,
                    "answer": row.answer,
                    "generate": generated,
                    "likelihood": chosen,
                }
                | ({} if row_shares[i] is None else {"kept_object_share": row_shares[i]})
            )
    families: dict[str, dict] = defaultdict(lambda: {"count": 0, **{m: 0 for m in SCORING}})
    for p in predictions:
        family = families[p["family"]]
        family["count"] += 1
        for mode in SCORING:
            family[mode] += int(p[mode] == p["answer"])
    for name, family in families.items():
        for mode in SCORING:
            family[mode] /= family["count"]
        kept = [p["kept_object_share"] for p in predictions if p["family"] == name and "kept_object_share" in p]
        if kept:
            family["kept_object_share"] = float(np.mean(kept))
    correct = {m: sum(p[m] == p["answer"] for p in predictions) for m in SCORING}
    shares = [p["kept_object_share"] for p in predictions if "kept_object_share" in p]
    return {
        "examples": len(predictions),
        "skipped": skipped,  # kind -> examples whose video could not be used (not in the accuracy)
        "accuracy": {m: correct[m] / len(predictions) for m in SCORING},
        "families": dict(sorted(families.items())),
        "vision_tokens_per_example": float(np.mean([e.vision_tokens for e in examples])),
        "frames_per_example": float(np.mean([len(e.pixels) for e in examples])),
        "predictions": predictions,
    } | ({"kept_object_share": float(np.mean(shares))} if shares else {})


@functools.partial(jax.jit, static_argnames="cfg")
def _scores_and_keep(cfg: Molmo2Config, params, batch: VideoBatch) -> tuple[jax.Array, jax.Array]:
    """Window scores and kept windows [batch, frames, windows] (the same draw as generation's)."""
    _, forward = Molmo2(cfg).apply({"params": params}, batch, rngs={"stts": jax.random.key(0)})
    return forward.out["stts/scores"], forward.pruned.keep


def _keep(cfg: Molmo2Config, params, batch: VideoBatch) -> jax.Array:
    return _scores_and_keep(cfg, params, batch)[1]


def window_scores(cfg: Molmo2Config, params: Any, source, index: int, tokenizer: Tokenizer) -> dict[str, np.ndarray]:
    """One example's {"frames" [T, H, W, 3], "masks" [T, H, W], "scores", "keep", "objects" [T, windows]}
    under a pruning model (scores: the scorer's, the heuristic's dissimilarity, or the random draw)."""
    if not cfg.stts.prunes:
        raise ConfigError(f"stts.method={cfg.stts.method!r} scores no windows; use stts, heuristic or random.")
    example = _examples(_Slice(source, index), cfg, tokenizer, None)[0][0]
    seq_len = -(-len(example.input_ids) // 16) * 16
    scores, keep = _scores_and_keep(cfg, params, _batch([example], cfg, seq_len, len(example.pixels)))
    record = source[index]
    return {
        "frames": record["video"],
        "masks": record["masks"],
        "scores": np.asarray(scores[0]),
        "keep": np.asarray(keep[0]),
        "objects": example.objects,
    }


class _Slice:
    """One record of a source, as a source of length 1."""

    def __init__(self, source, index: int):
        self.source, self.index = source, index

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int):
        return self.source[self.index + i]


def markdown_table(results: dict[str, dict], mode: str = "generate") -> str:
    """One row per named result: accuracy per family and overall (in %), vision tokens per example."""
    families = sorted({f for r in results.values() for f in r["families"]})
    header = ["run", *families, "overall", "vision tokens"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, r in results.items():
        cells = [f"{100 * r['families'][f][mode]:.1f}" if f in r["families"] else "-" for f in families]
        cells += [f"{100 * r['accuracy'][mode]:.1f}", f"{r['vision_tokens_per_example']:.0f}"]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines)
