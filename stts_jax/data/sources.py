"""The random-access source of a dataset split named by an experiment config (`config.data`): a TFDS
array_record dataset, built first if it is not there yet (on process 0; the other hosts wait), or for
manifests, optionally decoded on the fly. `data.dataset` picks one of `SOURCES`."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json

import jax
import ml_collections
import tensorflow_datasets as tfds
from jax.experimental import multihost_utils
from tokenizers import Tokenizer

from stts_jax.data.builders import (
    ManifestBuilderConfig,
    SceneBuilderConfig,
    SceneVideoQA,
    SyntheticBuilderConfig,
    SyntheticVideoQA,
    build_manifest,
    build_scenes,
    build_synthetic,
    manifest_dataset_name,
    open_manifest,
    open_split,
)
from stts_jax.data.clips import ClipSettings, load_clip
from stts_jax.data.manifest import Manifest, read_manifest
from stts_jax.data.scenes import FAMILIES as SCENE_FAMILIES
from stts_jax.data.scenes import SceneConfig
from stts_jax.data.synthetic import FAMILIES, SyntheticConfig
from stts_jax.data.tokenizer import load_tokenizer, synthetic_tokenizer
from stts_jax.errors import ConfigError, DataError
from stts_jax.models.variants import get_config


def _prepare_once(build) -> None:
    """Builds a dataset on process 0 only (one writer); the other hosts wait for it. TFDS's own progress
    bars and messages are left out (a manifest build shows its own progress; warnings still show)."""
    if jax.process_index() == 0:
        tfds.disable_progress_bar()
        with contextlib.redirect_stdout(io.StringIO()):
            build()
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("dataset built")


class OnTheFlySource:
    """A manifest's examples decoded from their video files at read time (in grain's worker processes when
    the pipeline has them): no build step, so the frame count can change from run to run. A record whose
    video cannot be used carries `error` = (kind, message), and the pipeline skips and counts it."""

    def __init__(self, manifest: Manifest, settings: ClipSettings):
        self.entries, self.settings = manifest.entries, settings
        self.report = {"manifest": manifest.path, "examples": len(manifest.entries), "skipped": dict(manifest.skipped)}

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict:
        e = self.entries[int(index)]
        record = e.question_fields()
        try:
            record["video"], record["timestamps"] = load_clip(e.clip, self.settings)
        except DataError as error:
            record["error"] = (error.kind, f"{e.where}: {error}")
        return record


MODES = ("stored", "on_the_fly")
MANIFEST_FIELDS = {"train": "train_manifest", "validation": "eval_manifest", "test": "test_manifest"}  # config.data


def manifest_source(config: ml_collections.ConfigDict, split: str):
    """The `split` of a manifest dataset: built once into data.data_dir (data.mode="stored", the default)
    or decoded from the videos as it is read (data.mode="on_the_fly")."""
    data = config.data
    if split not in MANIFEST_FIELDS:
        raise ConfigError(f"split {split!r}: a manifest dataset has the splits {sorted(MANIFEST_FIELDS)}.")
    manifests = {s: data.get(field) for s, field in MANIFEST_FIELDS.items()}
    if not manifests[split]:
        raise ConfigError(f"no manifest for the {split} split: set --config.data.{MANIFEST_FIELDS[split]}=PATH.jsonl")
    mode = data.get("mode", "stored")
    if mode not in MODES:
        raise ConfigError(f"data.mode {mode!r}: choose one of {MODES}.")
    try:
        settings = ClipSettings(
            max_frames=data.video_frames,
            max_fps=data.get("max_fps", 2.0),
            image_size=get_config(config.model.variant).vision.image_size[0],
            encoding=data.get("frame_encoding", "jpeg"),
            jpeg_quality=data.get("jpeg_quality", 95),
        )
    except ValueError as e:
        raise ConfigError(f"config.data: {e}") from e
    allow_outside = data.get("allow_outside_paths", False)
    if mode == "on_the_fly":
        return OnTheFlySource(read_manifest(manifests[split], data.strict, allow_outside), settings)
    name = manifest_dataset_name(data.get("name", "default"), split, manifests[split], settings, allow_outside)
    builder = ManifestBuilderConfig(
        name=name,
        manifest=manifests[split],
        split=split,
        clips=settings,
        strict=data.strict,
        allow_outside_paths=allow_outside,
        workers=data.get("build_workers", 0),
        progress=data.get("progress", False),
    )
    _prepare_once(lambda: build_manifest(data.data_dir, builder))
    return open_manifest(data.data_dir, builder)


def synthetic_settings(data: ml_collections.ConfigDict) -> SyntheticConfig:
    families = tuple(f for f in data.get("families", "").split(",") if f) or FAMILIES
    distractors = data.get("max_distractors", SyntheticConfig.max_distractors)
    fps = data.get("fps", 2.0)  # raised with the frame count for test-time scaling: same clip, denser
    try:
        return SyntheticConfig(frames=data.frames, fps=fps, families=families, max_distractors=distractors)
    except ValueError as e:
        raise ConfigError(
            f"{e} (config.data.frames; config.data.families is comma-separated; config.data.max_distractors)"
        ) from e


def _split_counts(data: ml_collections.ConfigDict) -> tuple[tuple[str, int], ...]:
    """The (split, examples) a procedural set's config asks for, empty splits left out."""
    counts = (("train", data.train_examples), ("validation", data.eval_examples), ("test", data.test_examples))
    return tuple((k, n) for k, n in counts if n > 0)


def synthetic_source(config: ml_collections.ConfigDict, split: str):
    """The `split` of the synthetic set the config describes, generated into data.data_dir once."""
    data = config.data
    synthetic = synthetic_settings(data)
    counts = _split_counts(data)
    # the name holds everything that changes the stored examples, so a data_dir never serves stale ones
    name = f"f{data.frames}_fps{synthetic.fps:g}_".replace(".", "p") + "_".join(f"{k}{n}" for k, n in counts)
    name += "" if synthetic.families == FAMILIES else "_" + "-".join(synthetic.families)
    default_distractors = SyntheticConfig.max_distractors
    name += "" if synthetic.max_distractors == default_distractors else f"_distractors{synthetic.max_distractors}"
    builder = SyntheticBuilderConfig(name=name, synthetic=synthetic, num_examples=counts)
    _prepare_once(lambda: build_synthetic(data.data_dir, builder))
    return open_split(SyntheticVideoQA, data.data_dir, builder, split)


def scene_settings(config: ml_collections.ConfigDict) -> SceneConfig:
    """config.data of a `scene_video_qa` experiment -> SceneConfig; frames at the model's input size unless
    data.size sets one (the pipeline resizes them to the model's)."""
    data = config.data
    families = tuple(f for f in data.get("families", "").split(",") if f) or SCENE_FAMILIES
    digits = tuple(int(d) for d in str(data.get("digits", "")).split(",") if d.strip()) or SceneConfig.digits
    size = data.get("size", 0) or get_config(config.model.variant).vision.image_size[0]
    try:
        return SceneConfig(
            frames=data.frames,
            fps=data.get("fps", 2.0),  # raised with the frame count for test-time scaling: same clip, denser
            size=size,
            families=families,
            digits=digits,
            digit_styles=data.get("digit_styles", 0),
            photo_saturation=data.get("photo_saturation", 0.0),
        )
    except ValueError as e:
        raise ConfigError(f"{e} (config.data.families and config.data.digits are comma-separated)") from e


def scene_source(config: ml_collections.ConfigDict, split: str):
    """The `split` of the scene set the config describes, generated into data.data_dir once."""
    data = config.data
    scenes = scene_settings(config)
    counts = _split_counts(data)
    # every field of the scene config and the builder's version decide the examples: the digest names them
    identity = {"scenes": dataclasses.asdict(scenes), "counts": counts, "version": str(SceneVideoQA.VERSION)}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    name = f"f{scenes.frames}_fps{scenes.fps:g}_s{scenes.size}_".replace(".", "p") + "_".join(
        f"{k}{n}" for k, n in counts
    )
    name += f"_{digest}"
    builder = SceneBuilderConfig(name=name, scenes=scenes, num_examples=counts)
    _prepare_once(lambda: build_scenes(data.data_dir, builder))
    return open_split(SceneVideoQA, data.data_dir, builder, split)


SOURCES = {
    "synthetic_video_qa": synthetic_source,
    "scene_video_qa": scene_source,
    "manifest_video_qa": manifest_source,
}
# The procedural sets: examples generated from data.frames, data.fps and data.{train,eval,test}_examples
# (test-time scaling raises the first two), read with their own vocabulary.
GENERATED = ("synthetic_video_qa", "scene_video_qa")


def split_source(config: ml_collections.ConfigDict, split: str):
    """The random-access source of `split`, its dataset built first if needed."""
    if config.data.dataset not in SOURCES:
        raise ConfigError(f"data.dataset {config.data.dataset!r}: expected one of {sorted(SOURCES)}.")
    return SOURCES[config.data.dataset](config, split)


def tokenizer_of(config: ml_collections.ConfigDict) -> Tokenizer:
    """The tokenizer the config's dataset is read with (the procedural sets ship their own vocabulary)."""
    data = config.data
    if data.dataset == "synthetic_video_qa":
        return synthetic_tokenizer(synthetic_settings(data).vocabulary())
    if data.dataset == "scene_video_qa":
        return synthetic_tokenizer(scene_settings(config).vocabulary())
    if not data.get("tokenizer"):
        raise ConfigError("data.tokenizer is empty: pass --config.data.tokenizer=PATH/tokenizer.json (Qwen3's).")
    return load_tokenizer(data.tokenizer)


def source(config: ml_collections.ConfigDict, split: str) -> tuple[object, Tokenizer]:
    """(random-access source of `split`, tokenizer), building the dataset first if needed."""
    return split_source(config, split), tokenizer_of(config)
