"""Convert Molmo2 checkpoints between Hugging Face directories and params-only Orbax checkpoints.

  python -m stts_jax.convert hf-to-orbax --src=HF_DIR --dst=ORBAX_DIR [--dtype=bfloat16]
  python -m stts_jax.convert orbax-to-hf --src=ORBAX_DIR --dst=HF_DIR [--dtype=bfloat16]

A Hugging Face directory is what `Molmo2ForConditionalGeneration.save_pretrained` writes (and what
`from_pretrained` reads); an Orbax directory holds `config.json` and `params/`. The model only: an STTS run's
scorer, tokenizer and processor files come with `python -m stts_jax.export --workdir=RUN --format=hf`. The
destination must be new or empty, and is written whole or not at all.
"""

from __future__ import annotations

import argparse
import os
import sys

from stts_jax.cli import INPUT_ERRORS
from stts_jax.convert.folders import new_folder
from stts_jax.convert.hf import cast_floating, load_molmo2, save_molmo2
from stts_jax.convert.orbax_params import load_params, save_params
from stts_jax.convert.scorer import SCORER_FILE
from stts_jax.errors import CheckpointError
from stts_jax.models.config import DTYPES
from stts_jax.platforms import start_present_backends


def convert(direction: str, src: str, dst: str, dtype: str | None = None) -> None:
    """Reads the checkpoint `src` and writes it to `dst` in the other format, floating params cast to `dtype`."""
    if direction == "hf-to-orbax":
        if os.path.exists(os.path.join(src, SCORER_FILE)):
            raise CheckpointError(
                f"{src} is an STTS export: its scorer ({SCORER_FILE}) has no place in a Molmo2 checkpoint. For an "
                "Orbax export with the scorer, export the run: python -m stts_jax.export --workdir=RUN "
                "--format=orbax --out=DIR."
            )
        cfg, params = load_molmo2(src)
        with new_folder(dst) as staging:
            save_params(cfg, params, staging, dtype=dtype)
    else:
        cfg, params = load_params(src)
        with new_folder(dst) as staging:
            save_molmo2(cfg, cast_floating(params, dtype), staging)


def main(argv: list[str] | None = None) -> int:
    start_present_backends()
    parser = argparse.ArgumentParser(prog="python -m stts_jax.convert", description=__doc__.splitlines()[0])
    parser.add_argument("direction", choices=["hf-to-orbax", "orbax-to-hf"])
    parser.add_argument("--src", required=True, help="directory to read")
    parser.add_argument("--dst", required=True, help="directory to write (new or empty)")
    parser.add_argument("--dtype", default=None, choices=DTYPES, help="cast floating params")
    args = parser.parse_args(argv)
    try:
        convert(args.direction, args.src, args.dst, args.dtype)
    except INPUT_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
