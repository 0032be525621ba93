"""Convert one of the paper's video-QA benchmarks, as published, to a manifest (`data.manifest`):

  python -m stts_jax.benchmarks.convert NAME --annotations=PATH --videos=DIR --out=FILE.jsonl [--subtitles=PATH]

NAME is one of the benchmarks listed under --annotations below. The manifest's video paths are relative to its
folder, which must hold --videos (or pass --allow_outside_paths, and read the manifest with
--config.data.allow_outside_paths=True). Questions that cannot be used (a missing video, an answer that names no
option, a test split without answers, ...) are skipped, counted by kind and summarised at the end (--strict:
stop at the first). Nothing is downloaded.
"""

from __future__ import annotations

from absl import flags

from stts_jax import cli
from stts_jax.benchmarks.conversion import convert
from stts_jax.benchmarks.registry import BENCHMARKS
from stts_jax.errors import ConfigError

_NAMES = "\n".join(f"  {name}: {benchmark.reads}" for name, benchmark in BENCHMARKS.items())
flags.DEFINE_string("annotations", None, "the benchmark's annotation file or folder, as published, by NAME:\n" + _NAMES)
flags.DEFINE_string("videos", None, "the folder of the benchmark's videos (its layout as published)")
flags.DEFINE_string("out", None, "the manifest to write (JSONL), in a folder that holds --videos")
flags.DEFINE_string(
    "subtitles",
    None,
    "the subtitles of videomme_subtitles / longvideobench_subtitles: each question's line carries its video's track",
)
flags.DEFINE_bool("allow_outside_paths", False, "allow --videos outside the manifest's folder (paths with ..)")
flags.DEFINE_bool("strict", False, "stop at the first question that cannot be used instead of skipping it")
flags.mark_flags_as_required(["annotations", "videos", "out"])


def main(argv: list[str]) -> int:
    names = argv[1:]
    if len(names) != 1 or names[0] not in BENCHMARKS:
        raise ConfigError(f"name one benchmark, one of: {', '.join(BENCHMARKS)} (got {' '.join(names) or 'none'})")
    f = flags.FLAGS
    report = convert(
        BENCHMARKS[names[0]],
        f.annotations,
        f.videos,
        f.out,
        subtitles=f.subtitles,
        allow_outside_paths=f.allow_outside_paths,
        strict=f.strict,
    )
    print(report.summary())
    return 0


if __name__ == "__main__":
    cli.run(main)
