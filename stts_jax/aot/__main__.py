"""Ahead-of-time compilation for a TPU slice from any host, no TPU needed: does the run fit, how fast is it.

  python -m stts_jax.aot --config=configs/molmo2_4b_v5p.py --topology=v5p:2x2x2
  python -m stts_jax.aot --config=configs/molmo2_4b_v6e.py --topology=v6e:4x8 --json=/tmp/aot.json
  python -m stts_jax.aot --config=configs/synthetic.py:variant=tiny --topology=v5e:2x2 --config.train.mesh.fsdp=4

libtpu (the `jax[tpu]` extra) describes the slice (`jax.experimental.topologies`); the config's mesh
is laid over its chips, and the real train step (`sharded_train_step`) and a prefill step (the
forward over the whole prompt into a KV cache, and the next-token logits) are lowered on abstract
sharded inputs and compiled by the TPU compiler, attention on the Pallas splash kernels. Printed
per chip: argument / output / temporary / peak memory against the chip's HBM, FLOPs, model FLOPs,
the estimated step time and the MFU it implies; then the same for k = 0 (`stts.method=none` on the
same batches) and the predicted speed-up. Exit status 1, with the reason, if a configured program does not fit in HBM or
cannot be sharded as configured.

How the figures are made (XLA's cost analysis has two blind spots, both handled here):
- Memory is that of the program as configured (layers under `lax.scan`), exact.
- XLA counts a loop body once, so FLOPs and time come from the same program compiled with the
  layers unrolled at two reduced depths per stack, extrapolated linearly to the real depths (every
  block of a stack costs the same): `--cost=extrapolate`, the default. `--cost=scan` reads the
  configured program instead and says that its figures count each stack once.
- XLA cannot see inside a Mosaic kernel. Step time = XLA's TPU cost model (`optimal_seconds`) for
  every other op + the splash kernels' FLOPs at the chip's peak bf16 rate (head_dim padded to the
  128-wide MXU), counted from the blocks each kernel's static mask lets it compute.
- Those are the FLOPs the compiled program executes, remat recomputation included. MFU divides the
  model FLOPs instead, the step's work as the model defines it (`train.step.model_flops`: layers
  unrolled, dense XLA attention, no remat; the prefill's forward likewise), by chips x the chip's
  peak (`stts_jax.accelerators`) x the estimated step time.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys

import jax

from stts_jax import cli
from stts_jax.aot.programs import run
from stts_jax.aot.report import failures, format_reports


def main(argv: list[str]) -> int:
    from absl import flags

    del argv
    f = flags.FLAGS
    # Describe and compile for the slice only: never initialise a local accelerator.
    jax.config.update("jax_platforms", "cpu")
    logging.getLogger("stts_jax").setLevel(logging.INFO)  # progress: each compile takes minutes
    setup, reports = run(
        f.config, f.topology, f.num_slices, f.cost, f.baseline, tuple(f.programs), f.baseline_memory, f.memory
    )
    print(format_reports(setup, reports))
    if f.json:
        rows = [
            dataclasses.asdict(r)
            | {"resident_bytes": r.resident_bytes, "fits": r.fits, "step_seconds": r.step_seconds}
            | {"mfu": None if math.isnan(r.mfu) else r.mfu}
            for r in reports
        ]
        with open(f.json, "w") as out:
            json.dump({"setup": setup, "programs": rows}, out, indent=2)
    problems = failures(reports)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


def _define_flags() -> None:
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "experiment config file (configs/*.py:args)", lock_config=True)
    flags.DEFINE_string("topology", None, "TPU slice, e.g. v5p:2x2x2, v5e:4x4, v6e:8x8")
    flags.DEFINE_integer("num_slices", 1, "slices joined over DCN (multi-slice); mesh 'data' spans them")
    flags.DEFINE_string("json", None, "also write the setup and every program's figures here")
    flags.DEFINE_enum("cost", "extrapolate", ["extrapolate", "scan"], "FLOPs/time: every layer counted, or as scanned")
    flags.DEFINE_bool("baseline", True, "also compile k = 0 (stts.method=none) on the same batches")
    flags.DEFINE_list("programs", ["train", "prefill"], "which steps to compile: train, prefill")
    flags.DEFINE_bool("memory", True, "the configured program's memory (its full compile), not only its cost")
    flags.DEFINE_bool("baseline_memory", True, "k = 0: also its memory (one more full compile), not only its cost")
    flags.mark_flags_as_required(["config", "topology"])


if __name__ == "__main__":
    _define_flags()
    cli.run(main)
