"""STTS on the synthetic video-QA set that ships with the package (offline; no download).

For the training entry point (issue #5), e.g.:
  python -m stts_jax.train --config=configs/synthetic.py:variant=tiny,method=stts,prune_ratio=0.5 --workdir=/tmp/run
  python -m stts_jax.train --config=configs/synthetic.py:method=random --config.data.batch_size=4 --workdir=/tmp/r

Arguments: variant (tiny | molmo2-4b | molmo2-8b), method (none | random | heuristic | stts |
stts_no_aux | fewer_frames), prune_ratio, frames (per video), seed, families (question families,
joined by "+", default all six of stts_jax.data.synthetic.FAMILIES), distractors (most still objects
besides the ones asked about), answer_format (letter | option).
"""

import ml_collections

from stts_jax.train.experiment import parse_arg, train_section


def model_sections(a: ml_collections.ConfigDict, aux_stop_gradient: bool) -> ml_collections.ConfigDict:
    """config.model and config.stts of a generated-data experiment, from its arguments (variant, method,
    prune_ratio): float32, the scorer after block 1 of `tiny`'s 5-block ViT, after block 3 otherwise."""
    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict({"variant": a.variant, "dtype": "float32", "param_dtype": "float32"})
    config.stts = ml_collections.ConfigDict(
        {
            "method": a.method,
            "prune_ratio": a.prune_ratio,
            "layer": 1 if a.variant == "tiny" else 3,
            "aux_stop_gradient": aux_stop_gradient,
        }
    )
    return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    a = parse_arg(
        arg,
        variant="tiny",
        method="stts",
        prune_ratio=0.5,
        frames=16,
        seed=0,
        families="",
        distractors=2,
        answer_format="letter",
    )
    config = model_sections(a, aux_stop_gradient=False)  # True: no gradient from the auxiliary target into the ViT
    config.data = ml_collections.ConfigDict(
        {
            "dataset": "synthetic_video_qa",
            "data_dir": "/tmp/stts_jax_data",
            "frames": a.frames,  # frames per synthetic video
            "train_examples": 600,
            "eval_examples": 120,
            "test_examples": 240,
            "batch_size": 4,
            "max_frames": 2 * a.frames,  # frame slots per row: two videos packed
            "llm_seq_len": 640,
            "max_videos_per_row": 2,
            "packing_bins": 4,
            "worker_count": 0,  # grain processes preparing batches while the device computes (0: in this one)
            "worker_buffer_size": 2,  # batches each of them prepares ahead
            "seed": a.seed,
            "strict": False,
            "answer_format": a.answer_format,
            "families": a.families.replace("+", ","),  # comma-separated; empty: the default six
            "max_distractors": a.distractors,
        }
    )
    config.train = train_section(
        steps=200,
        seed=a.seed,
        checkpoint_every=50,
        eval_every=50,
        # the paper's groups, scaled up for a model trained from scratch on a small set
        learning_rates=[["scorer/.*", 1e-3], ["vit/.*", 5e-4], ["connector/.*", 5e-4], ["(text|lm_head)/.*", 1e-3]],
        warmup_steps=20,
    )
    return config
