"""`python -m stts_jax.bench <sub-command> [options]`: the efficiency benchmarks (see BENCHMARKS.md).

  flops   forward FLOPs of STTS vs the unpruned model (XLA cost analysis, abstract shapes)
  paper   molmo2-4b train-step and prefill FLOP ratios at the paper's setups, next to its speed-ups
  step    train-step and prefill time, pruned vs unpruned side by side, ViT / LLM / scorer split
  torch   our forward against transformers' Molmo2 in PyTorch, same weights and inputs, same CPU
  data    input-pipeline throughput next to the train step
  video   video decoding and host preprocessing per core, stored vs on-the-fly, on realistic files

`python -m stts_jax.bench <sub-command> --help` lists a sub-command's options.
"""

from __future__ import annotations

import importlib
import sys

from stts_jax.cli import quiet_libraries
from stts_jax.platforms import start_present_backends

SUB_COMMANDS = {
    "flops": "flops",
    "paper": "paper",
    "step": "step",
    "torch": "pytorch",
    "data": "data",
    "video": "video",
}


def main(argv: list[str] | None = None) -> int:
    start_present_backends()
    quiet_libraries()
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if not argv or argv[0] not in SUB_COMMANDS:
        print(__doc__, file=sys.stderr)
        print(f"Give a sub-command first, one of: {', '.join(SUB_COMMANDS)}.", file=sys.stderr)
        return 2
    # Imported on demand: `torch` needs PyTorch and `data` TensorFlow Datasets, which the others do not.
    module = importlib.import_module(f"stts_jax.bench.{SUB_COMMANDS[argv[0]]}")
    return module.main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
