"""Molmo2-4B + STTS fine-tuning at the paper's recipe (STTS.md section 8) on a TPU v6e-32 slice.

Recipe: global batch 64 rows, each packing about two videos of at most 64 frames (128 frame slots),
9686 LLM tokens per row after pruning at k = 0.5 (14870 before), bf16 compute with fp32 params and
AdamW moments, the paper's learning-rate groups, 6,250 steps.

Slice: topology v6e:4x8 (v6e-32: 32 chips with 32 GiB HBM each, 8 hosts of 4 chips), mesh
fsdp=4 x tensor=8, 16 micro-batches (one row per fsdp group at a time).
Why: the logits of one row (9686 tokens x 152k vocabulary, with their fp32 softmax and gradient) and
its activations alone exceed a v6e chip's 32 GiB; tensor=8 splits the vocabulary, heads and MLP over
8 chips, and fsdp=4 shards the ~77 GB of fp32 parameters, gradients and AdamW moments 32 ways.
`remat_policy=full` keeps only each block's input for the backward pass.
MEASURED (BENCHMARKS.md, "TPU ahead of time"): the train step fits, 30.77 of 32 GiB per chip (3.8 %
margin: 5.02 arguments, 1.75 outputs, 25.75 temporaries). The smaller v6e:4x4 with fsdp=4 x tensor=4
does not: 35.76 GiB of temporaries per chip. The margin is thin; a longer text prompt or a third video
per row will not fit, and there one micro-batch is already one row per fsdp group.

Check on any host (compiles for the slice; exits 1 if it does not fit):
  python -m stts_jax.aot --config=configs/molmo2_4b_v6e.py --topology=v6e:4x8 --programs=train --nobaseline --cost=scan
Train (every host runs it):
  python -m stts_jax.train --config=configs/molmo2_4b_v6e.py --distributed \
      --config.data.train_manifest=gs://bucket/nextqa/train.jsonl --config.data.tokenizer=/ckpt/tokenizer.json \
      --config.train.init_from=/ckpt/Molmo2-4B --workdir=gs://bucket/runs/nextqa_k05

Arguments (`:frames=256,...`): those of `stts_jax.train.experiment.molmo2_4b_recipe`.
"""

from stts_jax.train.experiment import molmo2_4b_recipe


def get_config(arg: str | None = None):
    return molmo2_4b_recipe(arg, hosts=8, accumulate_steps=16, mesh={"data": 1, "fsdp": 4, "tensor": 8})
