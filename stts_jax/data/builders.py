"""TFDS builders (array_record; read back with `tfds.data_source`, no TensorFlow needed).

`SyntheticVideoQA`: the procedural set of `synthetic.py`, splits from disjoint seeds.
`SceneVideoQA`: the procedural set of `scenes.py` (photographs, a moving camera, local answers), the same way.
`ManifestVideoQA`: one split of any video-QA set written as a JSONL manifest (`manifest.py`), each
distinct clip decoded once (in worker processes), sampled as Molmo2 does, stored at model resolution
with compressed frames (`clips.py`); each question keeps its subtitle track whole, so the prompt picks the
lines near whatever frames a run samples. Bad lines and unusable videos are skipped and counted by kind
(`strict` raises instead); `REPORT_FILE` in the built dataset says what the build did.

A data_dir on gs:// holds the same folders. array_record opens local files only, so each host works in its
mirror of the data_dir (`stts_jax.storage.local_mirror`): a dataset is built there and uploaded, its
`dataset_info.json` last (TFDS reads a folder without it as not built); a host that finds it in the bucket
and not in its mirror copies it down once. A built dataset never changes (its name holds all that decides
its content), so a mirror cannot go stale.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import multiprocessing
import os
import re
import time
from collections.abc import Callable

import grain
import numpy as np
import tensorflow_datasets as tfds
import tqdm
from array_record.python.array_record_module import ArrayRecordWriter

from stts_jax import storage
from stts_jax.data import scenes, synthetic
from stts_jax.data.clips import ClipSettings, build_clip, decode_clip
from stts_jax.data.manifest import Clip, Entry, SkipCounter, manifest_bytes, read_manifest
from stts_jax.errors import DataError

log = logging.getLogger(__name__)

SPLIT_SEEDS = {"train": 1, "validation": 2, "test": 3}


def _video_feature(channels: bool = True) -> tfds.features.Tensor:
    shape = (None, None, None, 3) if channels else (None, None, None)
    return tfds.features.Tensor(shape=shape, dtype=np.uint8, encoding=tfds.features.Encoding.ZLIB)


def _qa_info(builder: tfds.core.GeneratorBasedBuilder, **media) -> tfds.core.DatasetInfo:
    """The question features every video-QA builder writes (answer -1 = free text), plus its `media`."""
    features = {
        "id": tfds.features.Text(),
        "question": tfds.features.Text(),
        "options": tfds.features.Sequence(tfds.features.Text()),
        "answer": np.int32,
        "answer_text": tfds.features.Text(),
        "family": tfds.features.Text(),
    }
    return tfds.core.DatasetInfo(
        builder=builder, description=type(builder).__doc__, features=tfds.features.FeaturesDict(features | media)
    )


def _generated_examples(generate, cfg, split: str, count: int):
    """(key, example) of a procedural split: examples 0..count-1 of its seed, with their timestamps."""
    for index in range(count):
        ex = generate(SPLIT_SEEDS[split], index, cfg)
        ex["timestamps"] = (np.arange(cfg.frames) / cfg.fps).astype(np.float32)
        ex["answer_text"] = ex["options"][ex["answer"]]
        del ex["fps"]
        yield ex["id"], ex


def _generated_media() -> dict:
    """The features of a procedural example besides its question: frames, their times, object masks."""
    timestamps = tfds.features.Tensor(shape=(None,), dtype=np.float32)
    return {"video": _video_feature(), "timestamps": timestamps, "masks": _video_feature(channels=False)}


@dataclasses.dataclass
class SyntheticBuilderConfig(tfds.core.BuilderConfig):
    synthetic: synthetic.SyntheticConfig = synthetic.SyntheticConfig()
    num_examples: tuple[tuple[str, int], ...] = (("train", 600), ("validation", 120), ("test", 240))


class SyntheticVideoQA(tfds.core.GeneratorBasedBuilder):
    """Procedural video QA with ground-truth object masks."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [SyntheticBuilderConfig(name="default")]

    def _info(self) -> tfds.core.DatasetInfo:
        return _qa_info(self, **_generated_media())

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split, n) for split, n in self.builder_config.num_examples}

    def _generate_examples(self, split: str, count: int):
        yield from _generated_examples(synthetic.generate_example, self.builder_config.synthetic, split, count)


MakeBuilder = Callable[[str], tfds.core.DatasetBuilder]  # a builder of one dataset over a local data_dir
DATASET_INFO = tfds.core.constants.DATASET_INFO_FILENAME  # TFDS counts a dataset folder without it as not built


def _remote_folder(data_dir: str, builder: tfds.core.DatasetBuilder, local: str) -> str:
    """Where the builder's dataset folder (local/name/config/version) lives in the remote data_dir."""
    return f"{data_dir.rstrip('/')}/{builder.data_path.relative_to(local).as_posix()}"


def _mirrored(make: MakeBuilder, data_dir: str) -> str:
    """The local data_dir this host reads the dataset from: `data_dir` itself, or for a remote one this host's
    mirror of it, into which the dataset is first copied if the bucket has it and the mirror does not."""
    if not storage.is_remote(data_dir):
        return data_dir
    local = storage.local_mirror(data_dir)
    builder = make(local)
    remote = _remote_folder(data_dir, builder, local)
    if not (builder.data_path / DATASET_INFO).exists() and storage.exists(f"{remote}/{DATASET_INFO}"):
        storage.download(remote, os.fspath(builder.data_path))
    return local


def _prepared(make: MakeBuilder, data_dir: str) -> tfds.core.DatasetBuilder:
    """The dataset built (or found built) in `data_dir`, local or remote; its builder over the local copy."""
    local = _mirrored(make, data_dir)
    builder = make(local)  # after the copy: a builder reads what is built when it is made
    builder.download_and_prepare()  # nothing to do when it is there
    if storage.is_remote(data_dir):
        remote = _remote_folder(data_dir, builder, local)
        if not storage.exists(f"{remote}/{DATASET_INFO}"):
            storage.upload(os.fspath(builder.data_path), remote, last=[DATASET_INFO])
    return builder


def _maker(cls: type[tfds.core.DatasetBuilder], config: tfds.core.BuilderConfig) -> MakeBuilder:
    return lambda data_dir: cls(data_dir=data_dir, config=config, file_format="array_record")


def open_split(cls: type[tfds.core.DatasetBuilder], data_dir: str, config: tfds.core.BuilderConfig, split: str):
    """The `split` of the dataset `cls` / `config` built in data_dir (local or remote): random access (tfds
    data source, no TensorFlow)."""
    make = _maker(cls, config)
    return make(_mirrored(make, data_dir)).as_data_source(split)


def build_synthetic(data_dir: str, config: SyntheticBuilderConfig | None = None) -> SyntheticVideoQA:
    """Builds the synthetic dataset `config` into data_dir (local or remote) unless it is there already."""
    return _prepared(_maker(SyntheticVideoQA, config or SyntheticBuilderConfig(name="default")), data_dir)


@dataclasses.dataclass
class SceneBuilderConfig(tfds.core.BuilderConfig):
    scenes: scenes.SceneConfig = scenes.SceneConfig()
    num_examples: tuple[tuple[str, int], ...] = (("train", 600), ("validation", 120), ("test", 240))


class SceneVideoQA(tfds.core.GeneratorBasedBuilder):
    """Procedural video QA over photographs with a moving camera: masks, the answer's objects, tags."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.1.0": "options: the answer, one other object's attribute, two no object shows; 8 lamp colours"}
    BUILDER_CONFIGS = [SceneBuilderConfig(name="default")]

    def _info(self) -> tfds.core.DatasetInfo:
        scene = {
            "targets": tfds.features.Tensor(shape=(None,), dtype=np.int32),  # mask ids that hold the answer
            "answerable": tfds.features.Text(),  # "static" | "temporal" (scenes.ANSWERABLE)
            "photo": tfds.features.Text(),  # scenes.PHOTOS
            "camera": tfds.features.Text(),  # scenes.MOTIONS
        }
        return _qa_info(self, **_generated_media(), **scene)

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split, n) for split, n in self.builder_config.num_examples}

    def _generate_examples(self, split: str, count: int):
        yield from _generated_examples(scenes.generate_example, self.builder_config.scenes, split, count)


def build_scenes(data_dir: str, config: SceneBuilderConfig | None = None) -> SceneVideoQA:
    """Builds the scene dataset `config` into data_dir (local or remote) unless it is there already."""
    return _prepared(_maker(SceneVideoQA, config or SceneBuilderConfig(name="default")), data_dir)


# -- manifests of real videos ------------------------------------------------------------------------------

CLIPS_FILE = "clips.array_record"  # one record per distinct clip (`clips.encode_clip`), in a built dataset's folder
REPORT_FILE = "build_report.json"  # examples, clips, skips by kind, bytes, seconds: what the build did


@dataclasses.dataclass
class ManifestBuilderConfig(tfds.core.BuilderConfig):
    manifest: str = ""  # the JSONL file (local or gs://)
    split: str = "train"
    clips: ClipSettings = ClipSettings()
    strict: bool = False  # raise on the first unusable line or video instead of skipping and counting
    allow_outside_paths: bool = False  # videos outside the manifest's folder (absolute, .., other buckets)
    workers: int = 0  # processes decoding videos (0: this one)
    progress: bool = False


def _imap(fn, jobs: list, workers: int):
    """fn over jobs in order, in `workers` spawned processes (never forked: the caller may hold JAX's threads)."""
    if workers <= 0:
        yield from map(fn, jobs)
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap(fn, jobs, chunksize=1)


class ManifestVideoQA(tfds.core.GeneratorBasedBuilder):
    """Video QA from a JSONL manifest: the examples here, each distinct clip once in `CLIPS_FILE`."""

    VERSION = tfds.core.Version("2.1.0")
    RELEASE_NOTES = {
        "2.0.0": "clips stored once, at model resolution, frames compressed; one split per dataset",
        "2.1.0": "subtitles: the line's subtitle track",
    }

    def _info(self) -> tfds.core.DatasetInfo:
        # clip: the record in CLIPS_FILE; subtitles: the track as JSON text (`subtitles.encode_track`)
        return _qa_info(self, clip=np.int64, subtitles=tfds.features.Text())

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        start = time.perf_counter()
        manifest = read_manifest(cfg.manifest, cfg.strict, cfg.allow_outside_paths)
        skip = SkipCounter(cfg.strict, cfg.manifest)
        skip.counts.update(manifest.skipped)
        users: dict[Clip, list[Entry]] = {}
        for entry in manifest.entries:
            users.setdefault(entry.clip, []).append(entry)
        index: dict[Clip, int] = {}
        stored = 0
        writer = ArrayRecordWriter(os.path.join(self.data_dir, CLIPS_FILE), "group_size:1")
        try:
            jobs = [(clip, cfg.clips) for clip in users]
            results = _imap(build_clip, jobs, cfg.workers)
            for clip, (record, error) in tqdm.tqdm(
                zip(users, results, strict=True),
                total=len(jobs),
                desc=f"clips of {cfg.split}",
                disable=not cfg.progress,
            ):
                if error is not None:
                    kind, message = error
                    for entry in users[clip]:  # every question about the clip is lost: count them all
                        skip(DataError(f"{entry.where}: {message}", kind))
                    continue
                index[clip] = len(index)
                writer.write(record)
                stored += len(record)
        finally:
            writer.close()
        usable = [e for e in manifest.entries if e.clip in index]
        if not usable:
            raise DataError(f"{cfg.manifest}: no usable example (skipped: {dict(skip.counts)})", "empty manifest")
        self.report = {
            "manifest": cfg.manifest,
            "split": cfg.split,
            "examples": len(usable),
            "clips": len(index),
            "skipped": dict(skip.counts),
            "clip_bytes": stored,
            "seconds": round(time.perf_counter() - start, 1),
            "settings": dataclasses.asdict(cfg.clips),
        }
        with open(os.path.join(self.data_dir, REPORT_FILE), "w") as f:  # moves with the dataset when it is done
            json.dump(self.report, f, indent=2)
        return {cfg.split: self._generate_examples(usable, index)}

    def _generate_examples(self, entries: list[Entry], index: dict[Clip, int]):
        for e in entries:
            yield e.id, e.question_fields() | {"clip": index[e.clip]}


class ManifestSource:
    """A built manifest dataset's examples with their clip's frames and timestamps (`video`,
    `timestamps`): the records the pipeline reads. Random access; picklable (for grain workers)."""

    def __init__(self, data_dir: str, name: str, split: str):  # data_dir: a local folder
        self.examples = tfds.data_source(f"manifest_video_qa/{name}", data_dir=data_dir, split=split)
        folder = os.fspath(self.examples.dataset_info.data_dir)
        self.clips = grain.sources.ArrayRecordDataSource([os.path.join(folder, CLIPS_FILE)])
        with open(os.path.join(folder, REPORT_FILE)) as f:
            self.report = json.load(f)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        example = dict(self.examples[index])
        example["video"], example["timestamps"] = decode_clip(self.clips[int(example["clip"])])
        return example


def manifest_dataset_name(prefix: str, split: str, manifest: str, settings: ClipSettings, allow_outside: bool) -> str:
    """The dataset a manifest builds into, named by everything that decides its content: the manifest's
    bytes, how clips are sampled and stored, the builder's version. Another manifest or other settings in
    the same data_dir build another dataset; nothing is served stale."""
    identity = {"settings": dataclasses.asdict(settings), "allow_outside": allow_outside}
    identity["version"] = str(ManifestVideoQA.VERSION)
    digest = hashlib.sha256(manifest_bytes(manifest))
    digest.update(json.dumps(identity, sort_keys=True).encode())
    clean = re.sub(r"[^a-z0-9]+", "_", prefix.lower()).strip("_") or "manifest"
    return f"{clean}_{split}_{digest.hexdigest()[:16]}"


@contextlib.contextmanager
def _build_lock(data_dir: str, name: str):
    """One builder at a time per dataset on this machine; the others wait and then reuse its result. A remote
    data_dir is locked in this host's mirror (object stores have no locks: multi-host runs build on process 0)."""
    data_dir = storage.local_mirror(data_dir) if storage.is_remote(data_dir) else data_dir
    os.makedirs(data_dir, exist_ok=True)
    with open(os.path.join(data_dir, f".{name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def open_manifest(data_dir: str, config: ManifestBuilderConfig) -> ManifestSource:
    """The source of the manifest dataset `config` built in data_dir (local or remote)."""
    return ManifestSource(_mirrored(_maker(ManifestVideoQA, config), data_dir), config.name, config.split)


def build_manifest(data_dir: str, config: ManifestBuilderConfig) -> ManifestSource:
    """Builds `config.manifest` into data_dir (local or remote; named by `manifest_dataset_name`; reused when
    already built) and returns its source. In strict mode a reused dataset whose build skipped lines is refused."""
    with _build_lock(data_dir, config.name):
        _prepared(_maker(ManifestVideoQA, config), data_dir)
    source = open_manifest(data_dir, config)
    skipped = source.report["skipped"]
    if config.strict and skipped:
        raise DataError(
            f"{config.manifest}: its build skipped {skipped} (strict mode; fix the lines or set strict=False)",
            "strict",
        )
    return source
