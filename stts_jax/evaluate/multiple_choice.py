"""Multiple-choice and yes/no video-QA evaluation, per question family, and test-time scaling of the frame count.

Two scoring modes, both always computed: `generate` (greedy decoding with the KV cache for up to
`max_new_tokens` tokens, the text up to <|im_end|> read by `benchmarks.answers.extract_choice` -- a letter,
"The answer is (B)", the option's words -- or, for a free-text yes/no answer, by `extract_yes_no`) and
`likelihood` (the option whose answer tokens have the highest log-likelihood after the prompt,
teacher-forced through the cache; for yes/no, "yes" against "no", each as the log-sum-exp over its
spellings "yes" / "Yes"). The answer is the option's letter (Molmo2's format) or its words
(`answer_format="option"`). Both modes read one prefill, so a model that answers with the letter alone
picks the same option in both. One example per row; pruning runs exactly as in training, with the method
and ratio of the model config, which the caller may set apart from training's.

Sharding: each process evaluates its slice of the examples (every `process_count`-th), its rows split
over its local devices (the parameters replicated on each); the predictions are gathered on every process
at the end, so the returned results are the whole split's.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tokenizers import Tokenizer

from stts_jax.benchmarks.answers import LABELS, extract_choice, extract_yes_no
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
MAX_NEW_TOKENS = 16  # generated tokens read per answer: room for "The answer is (B)." (lmms-eval's default too)
YES_NO = ("yes", "no")  # the choices of a free-text yes/no answer (TempCompass' yes_no task)


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
    id: str
    family: str
    options: tuple[str, ...]  # the options' words; none for a free-text yes/no answer
    answer: int  # index into `options`, or into YES_NO without options
    candidates: list[list[int]]  # token ids of each scored continuation (an option's letter or words; "yes", "Yes")
    candidate_choices: list[int]  # the choice each candidate stands for
    input_ids: np.ndarray  # [L] the prompt without the answer
    pixels: np.ndarray  # [T, patches, patch_dim] uint8
    vision_tokens: int  # LLM vision tokens after pruning
    objects: np.ndarray | None  # [T, windows] bool: the window shows an asked-about object (procedural sets)

    @property
    def yes_no(self) -> bool:
        return not self.options

    @property
    def choices(self) -> tuple[str, ...]:
        return self.options or YES_NO


def label(choice: int, yes_no: bool) -> str | None:
    """How a choice is written in predictions: the option's letter, or "yes" / "no"; None for no choice (-1)."""
    if choice < 0:
        return None
    return YES_NO[choice] if yes_no else LABELS[choice]


def read_generation(text: str, options: Sequence[str]) -> int:
    """The choice a generated answer names, -1 for none: an index into `options` by `extract_choice` (the option's
    letter, "The answer is (B)", its words, ...), or without options (a free-text yes/no answer) into YES_NO by
    `extract_yes_no`."""
    if not options:
        word = extract_yes_no(text)
        return -1 if word is None else YES_NO.index(word)
    chosen = extract_choice(text, options)
    return -1 if chosen is None else chosen


def _yes_no_candidates(tokenizer: Tokenizer) -> tuple[list[list[int]], list[int]]:
    """Each spelling of "yes" and "no" a model may answer with, as token ids (one per distinct encoding)."""
    candidates, choices = [], []
    for choice, word in enumerate(YES_NO):
        for spelling in (word, word.capitalize()):
            ids = encode_answer(tokenizer, spelling)
            if ids not in candidates:
                candidates.append(ids)
                choices.append(choice)
    return candidates, choices


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
    source,
    cfg: Molmo2Config,
    tokenizer: Tokenizer,
    limit: int | None,
    answer_format: str = "letter",
    shard: tuple[int, int] = (0, 1),
    skipped: Counter | None = None,
) -> Iterator[_Example]:
    """The examples of shard `shard` = (index, count) (every count-th of the first `limit`) to evaluate, read one
    at a time (a host holds the frames of one batch, not of the split); those skipped are counted by kind into
    `skipped`: a video that could not be used, a free-text answer other than yes / no."""
    pipeline = PipelineConfig(max_frames=1 << 30, llm_seq_len=1 << 30, answer_format=answer_format)
    preprocess = Preprocess(cfg, pipeline, tokenizer)
    windows = windows_per_frame(cfg)
    ratio = cfg.stts.prune_ratio if cfg.stts.prunes else 0.0
    yes_no = None
    for index in range(shard[0], len(source) if limit is None else min(limit, len(source)), shard[1]):
        record = source[index]
        if "error" in record:  # a video the on-the-fly source could not use
            preprocess._skip(record, *record["error"])
            continue
        options = tuple(as_text(o) for o in record["options"])
        if options:
            answer = int(record["answer"])
            candidates = [encode_answer(tokenizer, answer_text(i, options, answer_format)) for i in range(len(options))]
            candidate_choices = list(range(len(options)))
        else:
            words = as_text(record["answer_text"]).strip().lower()
            if words not in YES_NO:
                message = f"free-text answer {words!r} is neither yes nor no: nothing to score it against"
                preprocess._skip(record, "open-ended answer", message)
                continue
            yes_no = yes_no or _yes_no_candidates(tokenizer)
            answer, (candidates, candidate_choices) = YES_NO.index(words), yes_no
        frames, times = preprocess.frames(record)
        prompt = preprocess.prompt(record, times, with_answer=False)
        yield _Example(
            index=index,
            id=as_text(record.get("id", index)),
            family=as_text(record.get("family", "all")),
            options=options,
            answer=answer,
            candidates=candidates,
            candidate_choices=candidate_choices,
            input_ids=prompt["input_ids"],
            pixels=patchify(resize(frames, cfg.vision.image_size[0]), cfg.vision.patch_size),
            vision_tokens=budget.kept_windows(len(frames), windows, ratio),
            objects=object_windows(record["masks"], cfg, record.get("targets")) if "masks" in record else None,
        )
    if skipped is not None:
        skipped.update(preprocess.skipped)


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
    max_new_tokens: int = MAX_NEW_TOKENS,
) -> dict:
    """Accuracy of `params` on every example of `source` (or the first `limit`), by both modes, over all
    processes and their local devices (`batch_size` rows per forward pass on each process, split over its
    devices); every process returns the same, whole result.

    Returns {"examples", "skipped": {kind: count}, "accuracy": {mode: overall}, "families": {family:
    {"count", mode: acc}}, "unanswered": generations that name no choice, "vision_tokens_per_example",
    "frames_per_example", "predictions": [per example, in source order: "index", "id", "family", "answer",
    "generate" and "likelihood" (the choice each mode made, an index; -1: the generation names none),
    "generated" (its text), "yes_no", "frames", "vision_tokens"]}, and where the source has object masks
    and the model prunes, "kept_object_share": the share of object windows (frames after the first) that
    the pruning keeps, overall, per family and per example."""
    devices = len(jax.local_devices())
    if batch_size % devices:
        raise ConfigError(
            f"batch_size {batch_size} must be a multiple of this process's {devices} devices (each takes an equal "
            "share of the rows); pass another --batch_size."
        )
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens {max_new_tokens} must be at least 1.")
    shard = (jax.process_index(), jax.process_count())
    skipped = Counter()
    examples = _examples(source, cfg, tokenizer, limit, answer_format, shard, skipped)
    total = len(range(shard[0], len(source) if limit is None else min(limit, len(source)), shard[1]))
    local = _predict(cfg, params, examples, total, tokenizer, batch_size, max_new_tokens, progress)
    predictions = sorted(gather_lists(local), key=lambda p: p["index"])
    skipped = sum((Counter(counts) for counts in gather_lists([skipped])), Counter())
    if not predictions:
        raise ValueError("the evaluation split is empty.")
    return summarise(predictions) | {"skipped": dict(skipped)}  # kind -> examples not in the accuracy


def _grown(size: int, seen: int, step: int) -> int:
    """The padded size of a batch dimension: the largest seen so far, rounded up to `step`, so that the shapes
    (and the compiles) change only when a batch holds a longer example than any before it."""
    return max(seen, -(-size // step) * step)


def _predict(
    cfg: Molmo2Config,
    params: Any,
    examples: Iterable[_Example],
    total: int,
    tokenizer: Tokenizer,
    batch_size: int,
    max_new_tokens: int,
    progress: bool,
) -> list[dict]:
    """The prediction of each example, `batch_size` at a time (read as they are needed), its rows split over this
    process's devices."""
    mesh = Mesh(np.asarray(jax.local_devices()), ("data",))
    rows_sharding = NamedSharding(mesh, PartitionSpec("data"))
    params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
    end = token_id(tokenizer, "<|im_end|>")
    seq_len = frame_slots = num_candidates = answer_len = 0
    predictions = []
    bar = tqdm.tqdm(total=total, desc="evaluate", disable=not progress)
    examples = iter(examples)
    while rows := list(itertools.islice(examples, batch_size)):
        bar.update(len(rows))
        seq_len = _grown(max(len(e.input_ids) for e in rows), seq_len, 16)
        frame_slots = _grown(max(len(e.pixels) for e in rows), frame_slots, 1)
        num_candidates = max(num_candidates, *(len(e.candidates) for e in rows))
        answer_len = _grown(max(len(c) for e in rows for c in e.candidates), answer_len, 1)
        padded = list(rows) + [rows[-1]] * (batch_size - len(rows))  # the batch's shape fixed: compiles only on growth
        batch = jax.device_put(_batch(padded, cfg, seq_len, frame_slots), rows_sharding)
        candidates = np.zeros((batch_size, num_candidates, answer_len), np.int32)
        for i, row in enumerate(padded):
            for k, candidate in enumerate(row.candidates):
                candidates[i, k, : len(candidate)] = candidate
        candidates = jax.device_put(candidates, rows_sharding)
        tokens, scores = generate_and_score(cfg, params, batch, candidates, max_new_tokens)
        tokens, scores = np.asarray(tokens), np.asarray(scores)
        row_shares = [None] * len(rows)
        if cfg.stts.prunes and rows[0].objects is not None:
            keep = np.asarray(_keep(cfg, params, batch))
            for i, row in enumerate(rows):  # frame 0 is never pruned: count frames 1.. only
                objects = row.objects[1:]
                row_shares[i] = float(keep[i, 1 : len(row.objects)][objects].sum() / max(objects.sum(), 1))
        for i, row in enumerate(rows):
            generated = tokens[i].tolist()
            generated = generated[: generated.index(end)] if end in generated else generated
            text = tokenizer.decode(generated, skip_special_tokens=True)
            by_choice = np.full(len(row.choices), -np.inf)
            for k, choice in enumerate(row.candidate_choices):  # a choice's spellings: log-sum-exp
                by_choice[choice] = np.logaddexp(by_choice[choice], scores[i, k])
            predictions.append(
                {
                    "index": row.index,
                    "id": row.id,
                    "family": row.family,
                    "answer": row.answer,
                    "generate": read_generation(text, row.options),
                    "likelihood": int(np.argmax(by_choice)),
                    "generated": text,
                    "yes_no": row.yes_no,
                    "frames": len(row.pixels),
                    "vision_tokens": row.vision_tokens,
                }
                | ({} if row_shares[i] is None else {"kept_object_share": row_shares[i]})
            )
    bar.close()
    return predictions


def gather_lists(items: list) -> list:
    """Every process's `items` (JSON values), concatenated in process order on every process (one all-gather of
    their JSON text); the list itself in a single-process run."""
    if jax.process_count() == 1:
        return list(items)
    text = np.frombuffer(json.dumps(items).encode(), np.uint8)
    sizes = multihost_utils.process_allgather(np.asarray([text.size], np.int64))[:, 0]
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: text.size] = text
    texts = multihost_utils.process_allgather(padded)  # [processes, longest]
    return [item for text, size in zip(texts, sizes, strict=True) for item in json.loads(text[:size].tobytes())]


def summarise(predictions: Sequence[dict]) -> dict:
    """Accuracy by both modes overall and per family, and the means per example, of `evaluate`'s predictions."""
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
        "accuracy": {m: correct[m] / len(predictions) for m in SCORING},
        "families": dict(sorted(families.items())),
        "unanswered": sum(p["generate"] < 0 for p in predictions),
        "vision_tokens_per_example": float(np.mean([p["vision_tokens"] for p in predictions])),
        "frames_per_example": float(np.mean([p["frames"] for p in predictions])),
        "predictions": list(predictions),
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
    example = next(_examples(_Slice(source, index), cfg, tokenizer, None))
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
