"""The random-access source of a dataset split named by an experiment config (`config.data`), built as a
TFDS array_record dataset first if it is not there yet (on process 0; the other hosts wait)."""

from __future__ import annotations

import jax
import ml_collections
import tensorflow_datasets as tfds
from jax.experimental import multihost_utils

from stts_jax.data.builders import ManifestBuilderConfig, ManifestVideoQA, SyntheticBuilderConfig, build_synthetic
from stts_jax.data.synthetic import FAMILIES, SyntheticConfig
from stts_jax.data.tokenizer import load_tokenizer, synthetic_tokenizer
from stts_jax.errors import ConfigError


def _prepare_once(build) -> None:
    """Builds a dataset on process 0 only (one writer); the other hosts wait for it."""
    if jax.process_index() == 0:
        build()
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("dataset built")


def source(config: ml_collections.ConfigDict, split: str):
    """(random-access source of `split`, tokenizer), building the TFDS dataset first if needed."""
    data = config.data
    if data.dataset == "synthetic_video_qa":
        fps = data.get("fps", 2.0)  # raised with the frame count for test-time scaling: same clip, denser
        families = tuple(f for f in data.get("families", "").split(",") if f) or FAMILIES
        distractors = data.get("max_distractors", SyntheticConfig.max_distractors)
        try:
            synthetic = SyntheticConfig(frames=data.frames, fps=fps, families=families, max_distractors=distractors)
        except ValueError as e:
            raise ConfigError(f"{e} (config.data.families is comma-separated; config.data.max_distractors)") from e
        counts = (("train", data.train_examples), ("validation", data.eval_examples), ("test", data.test_examples))
        counts = tuple((k, n) for k, n in counts if n > 0)
        # the name holds everything that changes the stored examples, so a data_dir never serves stale ones
        name = f"f{data.frames}_fps{fps:g}_".replace(".", "p") + "_".join(f"{k}{n}" for k, n in counts)
        name += "" if families == FAMILIES else "_" + "-".join(families)
        name += "" if distractors == SyntheticConfig.max_distractors else f"_distractors{distractors}"
        builder = SyntheticBuilderConfig(name=name, synthetic=synthetic, num_examples=counts)
        _prepare_once(lambda: build_synthetic(data.data_dir, builder))
        tokenizer = synthetic_tokenizer(synthetic.vocabulary())
        return tfds.data_source(f"synthetic_video_qa/{name}", data_dir=data.data_dir, split=split), tokenizer
    if data.dataset == "manifest_video_qa":
        manifests = {"train": data.train_manifest, "validation": data.eval_manifest, "test": data.get("test_manifest")}
        if not manifests.get(split):
            raise ConfigError(f"no manifest for the {split} split: set --config.data.{split}_manifest=PATH.jsonl")
        if not data.get("tokenizer"):
            raise ConfigError("data.tokenizer is empty: pass --config.data.tokenizer=PATH/tokenizer.json (Qwen3's).")
        name = data.get("name", "default")
        builder = ManifestVideoQA(
            data_dir=data.data_dir,
            config=ManifestBuilderConfig(
                name=name,
                manifests=tuple((k, v) for k, v in manifests.items() if v),
                max_frames=data.video_frames,
                strict=data.strict,
            ),
            file_format="array_record",
        )
        _prepare_once(builder.download_and_prepare)
        source = tfds.data_source(f"manifest_video_qa/{name}", data_dir=data.data_dir, split=split)
        return source, load_tokenizer(data.tokenizer)
    raise ConfigError(f"data.dataset {data.dataset!r}: expected synthetic_video_qa or manifest_video_qa.")
