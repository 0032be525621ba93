"""Convert Molmo2 checkpoints between Hugging Face directories and params-only Orbax checkpoints.

  python -m stts_jax.convert hf-to-orbax --src=HF_DIR --dst=ORBAX_DIR [--dtype=bfloat16]
  python -m stts_jax.convert orbax-to-hf --src=ORBAX_DIR --dst=HF_DIR

A Hugging Face directory is what `Molmo2ForConditionalGeneration.save_pretrained` writes (and what
`from_pretrained` reads); an Orbax directory holds `config.json` and `params/`.
"""

from __future__ import annotations

import argparse
import sys

from stts_jax.convert.hf import load_molmo2, save_molmo2
from stts_jax.convert.orbax_params import load_params, save_params
from stts_jax.errors import CheckpointError
from stts_jax.platforms import start_present_backends


def main(argv: list[str] | None = None) -> int:
    start_present_backends()
    parser = argparse.ArgumentParser(prog="python -m stts_jax.convert", description=__doc__.splitlines()[0])
    parser.add_argument("direction", choices=["hf-to-orbax", "orbax-to-hf"])
    parser.add_argument("--src", required=True, help="directory to read")
    parser.add_argument("--dst", required=True, help="directory to write")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="cast params (hf-to-orbax)")
    args = parser.parse_args(argv)
    try:
        if args.direction == "hf-to-orbax":
            cfg, params = load_molmo2(args.src)
            save_params(cfg, params, args.dst, dtype=args.dtype)
        else:
            cfg, params = load_params(args.src)
            save_molmo2(cfg, params, args.dst)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
