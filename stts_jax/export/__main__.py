"""python -m stts_jax.export --workdir=DIR [--step=N] --format=hf|orbax --out=DIR [--dtype=bfloat16]"""

from __future__ import annotations

from absl import flags

from stts_jax import cli
from stts_jax.export.formats import FORMATS, export_run
from stts_jax.models.config import DTYPES

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "the training run's directory")
flags.DEFINE_integer("step", None, "checkpoint step to export (default: the latest)")
flags.DEFINE_enum(
    "format", "hf", FORMATS, "hf: transformers Molmo2 folder (+ tokenizer, processor, scorer); orbax: params-only Orbax"
)
flags.DEFINE_string("out", None, "output directory (new or empty; local or gs://)")
flags.DEFINE_enum("dtype", None, DTYPES, "cast floating params (both formats)")


def main(argv):
    del argv
    step = export_run(FLAGS.workdir, FLAGS.out, FLAGS.format, FLAGS.step, FLAGS.dtype)
    print(f"exported step {step} of {FLAGS.workdir} as {FLAGS.format} to {FLAGS.out}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["workdir", "out"])
    cli.run(main)
