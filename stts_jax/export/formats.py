"""Export a trained run for inference, and load what was exported.

  python -m stts_jax.export --workdir=/tmp/run [--step=200] --format=hf --out=/tmp/run_hf
  python -m stts_jax.export --workdir=/tmp/run --format=orbax --dtype=bfloat16 --out=/tmp/run_orbax

`hf`: a Hugging Face Molmo2 directory (`config.json` + safetensors, loadable by
`Molmo2ForConditionalGeneration.from_pretrained`) with the scorer in `stts_scorer.safetensors` and the
STTS settings in `stts_config.json` beside it (transformers ignores both). `orbax`: a params-only
Orbax checkpoint (scorer included) + the same two JSON files. `load_export` reads either back.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from stts_jax.convert.hf import load_molmo2, save_molmo2
from stts_jax.convert.orbax_params import PARAMS_DIR, load_params, save_params
from stts_jax.errors import CheckpointError
from stts_jax.models.config import Molmo2Config, STTSConfig

FORMATS = ("hf", "orbax")
DTYPES = ("float32", "bfloat16", "float16")  # what floating params may be exported as
STTS_CONFIG_FILE = "stts_config.json"
SCORER_FILE = "stts_scorer.safetensors"


def export(cfg: Molmo2Config, params: dict, out: str, fmt: str, dtype: str | None = None) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"export format {fmt!r} is not known; choose one of {FORMATS}.")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r} is not an export dtype; choose one of {DTYPES} (nothing was written).")
    if os.path.exists(out) and not os.path.isdir(out):
        raise CheckpointError(f"{out} is a file; --out must name a new or empty directory (nothing was written).")
    if os.path.exists(out) and os.listdir(out):
        raise CheckpointError(f"{out} is not empty; choose a new output directory (nothing was overwritten).")
    if fmt == "orbax":
        save_params(cfg, params, out, dtype)
    else:
        from safetensors.numpy import save_file

        if dtype is not None:  # floating params only (there are no others today; ids stay integers)
            params = jax.tree.map(
                lambda x: np.asarray(x).astype(jnp.dtype(dtype)) if jnp.issubdtype(x.dtype, jnp.floating) else x, params
            )
        backbone = {k: v for k, v in params.items() if k != "scorer"}
        save_molmo2(dataclasses.replace(cfg, stts=STTSConfig()), backbone, out)
        if "scorer" in params:
            flat = flax.traverse_util.flatten_dict(params["scorer"], sep="/")
            save_file({k: np.ascontiguousarray(v) for k, v in flat.items()}, os.path.join(out, SCORER_FILE))
    with open(os.path.join(out, STTS_CONFIG_FILE), "w") as f:
        json.dump(dataclasses.asdict(cfg.stts), f, indent=2)


def load_export(path: str, stts: STTSConfig | None = None, **runtime: Any) -> tuple[Molmo2Config, dict]:
    """An exported directory (either format) -> (config, params). The STTS settings are the saved ones
    unless `stts` replaces them (e.g. evaluate another method or ratio); the scorer is dropped when the
    method does not use it. `runtime` sets run-time fields (dtype, attention_impl, ...)."""
    if not os.path.isdir(path):
        raise CheckpointError(f"{path} does not exist or is not a directory; pass a directory stts_jax.export wrote.")
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
            from safetensors.numpy import load_file

            params["scorer"] = flax.traverse_util.unflatten_dict(load_file(os.path.join(path, SCORER_FILE)), sep="/")
    stts = saved if stts is None else stts
    if stts.uses_scorer and "scorer" not in params:
        raise CheckpointError(
            f"{path} holds no STTS scorer, but stts.method={stts.method!r} needs one; evaluate with method "
            "none / random / heuristic / fewer_frames, or export a run trained with the scorer."
        )
    if not stts.uses_scorer:
        params = {k: v for k, v in params.items() if k != "scorer"}
    return dataclasses.replace(cfg, stts=stts), params
