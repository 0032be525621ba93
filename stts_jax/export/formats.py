"""Export a trained run for inference, and load what was exported.

  python -m stts_jax.export --workdir=/tmp/run [--step=200] --format=hf --out=/tmp/run_hf
  python -m stts_jax.export --workdir=/tmp/run --format=orbax --dtype=bfloat16 --out=/tmp/run_orbax

`hf`: a Hugging Face Molmo2 folder: `config.json` + safetensors (`Molmo2ForConditionalGeneration.from_pretrained`),
the run's tokenizer and Molmo2's processor files (`AutoProcessor.from_pretrained`, stts_jax/convert/hf_processor.py)
and `generation_config.json`; beside them, ignored by transformers, the scorer under the authors' PyTorch names
(`stts_scorer.safetensors`, stts_jax/convert/scorer.py) and the STTS settings (`stts_config.json`). `orbax`: a
params-only Orbax checkpoint (scorer included) + `config.json` and `stts_config.json`. `load_export` reads either.
An export is written whole or not at all (stts_jax/convert/folders.py); --workdir and --out may be on gs://.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import ml_collections
from etils import epath

from stts_jax import storage
from stts_jax.convert.folders import check_new_folder, new_folder
from stts_jax.convert.hf import cast_floating, load_molmo2, save_molmo2
from stts_jax.convert.hf_processor import TOKENIZER_FILE, ProcessorSource, save_processor
from stts_jax.convert.orbax_params import PARAMS_DIR, load_params, save_params
from stts_jax.convert.scorer import SCORER_FILE, load_scorer, save_scorer
from stts_jax.data.clips import ClipSettings
from stts_jax.data.sources import GENERATED, tokenizer_of
from stts_jax.data.tokenizer import load_tokenizer
from stts_jax.errors import CheckpointError, ConfigError
from stts_jax.models.config import Molmo2Config, STTSConfig
from stts_jax.train.checkpoint import restore_params, run_config

log = logging.getLogger(__name__)

FORMATS = ("hf", "orbax")
STTS_CONFIG_FILE = "stts_config.json"


def processor_source(config: ml_collections.ConfigDict) -> ProcessorSource:
    """What a run's Hugging Face processor files are made from, read off its experiment config: the tokenizer its
    data was read with (the synthetic set's own, or data.tokenizer; if that file is gone, the tokenizer.json of
    the Hugging Face checkpoint in train.init_from) and its frame sampling."""
    data = config.data
    if data.dataset in GENERATED:  # procedural sets: their own vocabulary, data.frames at data.fps
        return ProcessorSource(tokenizer_of(config), data.frames, data.get("fps", 2.0))
    init_from = config.train.get("init_from", "")
    fallback = os.path.join(init_from, TOKENIZER_FILE) if init_from else ""
    try:
        tokenizer = tokenizer_of(config)
    except (ConfigError, OSError) as e:
        if not (fallback and os.path.exists(fallback)):
            raise CheckpointError(
                f"the run's tokenizer cannot be read ({e}); the Hugging Face folder needs it. Put data.tokenizer's "
                "file back where the run's config.json says it is, then export again."
            ) from e
        log.warning("the run's data.tokenizer cannot be read (%s); using %s, of train.init_from", e, fallback)
        tokenizer = load_tokenizer(fallback)
    return ProcessorSource(tokenizer, data.video_frames, data.get("max_fps", ClipSettings.max_fps))


def export(
    cfg: Molmo2Config,
    params: dict,
    out: str,
    fmt: str,
    dtype: str | None = None,
    processor: ProcessorSource | None = None,
) -> None:
    """Writes `params` of the model `cfg` to the new or empty folder `out` as `fmt` (FORMATS), floating params
    cast to `dtype` (stts_jax.models.config.DTYPES; None: as they are). `processor` adds the tokenizer and
    processor files to an `hf` folder (export_run passes the run's); without it the folder holds the model."""
    if fmt not in FORMATS:
        raise ConfigError(f"export format {fmt!r} is not known; choose one of {FORMATS}.")
    params = cast_floating(params, dtype)
    with new_folder(out) as staging:
        if fmt == "orbax":
            save_params(cfg, params, staging)
        else:
            backbone = {k: v for k, v in params.items() if k != "scorer"}
            if processor is not None:  # first: a tokenizer that does not fit the model fails before the big files
                save_processor(cfg, processor, staging)
            save_molmo2(dataclasses.replace(cfg, stts=STTSConfig()), backbone, staging)
            if "scorer" in params:
                save_scorer(params["scorer"], os.path.join(staging, SCORER_FILE))
        with open(os.path.join(staging, STTS_CONFIG_FILE), "w") as f:
            json.dump(dataclasses.asdict(cfg.stts), f, indent=2)


def export_run(workdir: str, out: str, fmt: str, step: int | None = None, dtype: str | None = None) -> int:
    """Exports step `step` (None: the latest) of the training run in `workdir` to `out` (see export); an `hf`
    folder gets the run's tokenizer and processor files. Returns the step exported."""
    check_new_folder(out)  # before the restore, which takes a while on a big model
    config = run_config(workdir)
    processor = processor_source(config) if fmt == "hf" else None
    cfg, params, step = restore_params(workdir, step)
    export(cfg, params, out, fmt, dtype, processor)
    return step


def load_export(path: str, stts: STTSConfig | None = None, **runtime: Any) -> tuple[Molmo2Config, dict]:
    """An exported directory (either format; local or gs://) -> (config, params). The STTS settings are the
    saved ones unless `stts` replaces them (e.g. evaluate another method or ratio); the scorer is dropped when
    the method does not use it. `runtime` sets run-time fields (dtype, attention_impl, ...). A remote directory
    is copied to a temporary local one first (safetensors reads local files)."""
    if not epath.Path(path).is_dir():
        raise CheckpointError(f"{path} does not exist or is not a directory; pass a directory stts_jax.export wrote.")
    with storage.local_copy(path) as local:
        cfg, params, saved = _read_export(local, **runtime)
    stts = saved if stts is None else stts
    if stts.uses_scorer and "scorer" not in params:
        raise CheckpointError(
            f"{path} holds no STTS scorer, but stts.method={stts.method!r} needs one; evaluate with method "
            "none / random / heuristic / fewer_frames, or export a run trained with the scorer."
        )
    if not stts.uses_scorer:
        params = {k: v for k, v in params.items() if k != "scorer"}
    return dataclasses.replace(cfg, stts=stts), params


def _read_export(path: str, **runtime: Any) -> tuple[Molmo2Config, dict, STTSConfig]:
    """(config, params, saved STTS settings) of a local exported directory."""
    saved = STTSConfig()
    stts_path = os.path.join(path, STTS_CONFIG_FILE)
    if os.path.exists(stts_path):
        with open(stts_path) as f:
            values = json.load(f)
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(STTSConfig)})
        if unknown:
            raise CheckpointError(
                f"{stts_path} has STTS field(s) {unknown} that this version does not know (another version wrote "
                "it); re-export with this version or remove those fields."
            )
        saved = STTSConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    if os.path.isdir(os.path.join(path, PARAMS_DIR)):
        cfg, params = load_params(path, stts=saved, **runtime)
    else:
        cfg, params = load_molmo2(path, **runtime)
        if os.path.exists(os.path.join(path, SCORER_FILE)):
            params["scorer"] = load_scorer(os.path.join(path, SCORER_FILE), dataclasses.replace(cfg, stts=saved))
    return cfg, params, saved
