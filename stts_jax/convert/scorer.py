"""The STTS scorer under the authors' PyTorch names, written as `stts_scorer.safetensors` beside a Hugging Face
Molmo2 folder (transformers' Molmo2 has no scorer, so the scorer travels in its own file).

The names are those of `TemporalTokenScorer` in the authors' code (allenai/molmo2,
olmo/nn/temporal_image_vit.py) at the place their Molmo2 holds it, PREFIX (the prefix their checkpoint
loader uses, olmo/train/distributed_checkpointing.py). So the file loads into their model with
`model.load_state_dict(tensors, strict=False)`, and into a bare `TemporalTokenScorer` once PREFIX is cut.
Torch `Linear` weights are [out, in]; our Flax kernels are [in, out].

| ours: params["scorer"][...]       | theirs: PREFIX + ...                      | layout              |
|-----------------------------------|-------------------------------------------|---------------------|
| pooler/q/kernel [D, H*hd]         | patch_token_pooler.wq.weight [H*hd, D]    | transposed          |
| pooler/k/kernel [D, Hkv*hd]       | patch_token_pooler.wk.weight [Hkv*hd, D]  | transposed          |
| pooler/v/kernel [D, Hkv*hd]       | patch_token_pooler.wv.weight [Hkv*hd, D]  | transposed          |
| pooler/o/kernel [H*hd, D]         | patch_token_pooler.wo.weight [D, H*hd]    | transposed          |
| fc1/kernel [2D, M]                | mlp.w1.weight [M, 2D]                     | transposed          |
| fc2/kernel [M, M]                 | mlp.w2.weight [M, M]                      | transposed          |
| fc3/kernel [M, 1]                 | mlp.w3.weight [1, M]                      | transposed          |
| <module>/bias [out]               | <module>.bias [out]                       | as is               |

D is the ViT width, H / Hkv / hd its heads, KV heads and head width (the pooler is shaped like a ViT
attention layer, theirs `ViTMultiHeadDotProductAttention`), M = `stts.mlp_dim` or the ViT's MLP width
(their `image_mlp_dim`). fc1's input is [previous frame's pooled window || this frame's], as theirs.

The forwards agree wherever every window is full, as on Molmo2's 27 x 27 patch grid (81 windows of 3 x 3).
On a grid that is not a multiple of 3 (the `tiny` test model's 7 x 7) the edge windows have padding
slots: the authors average all 9 slots (zeros included) into the query and attend to the padding slots
too; ours averages and attends the window's real patches only.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import flax.traverse_util
import numpy as np

from stts_jax.errors import CheckpointError
from stts_jax.models.config import Molmo2Config
from stts_jax.vlm.model import param_shapes

SCORER_FILE = "stts_scorer.safetensors"
PREFIX = "vision_backbone.image_vit.transformer.temporal_token_scorer."
# our module -> theirs; each holds a kernel ("weight", transposed) and a bias
MODULES = {
    "pooler/q": "patch_token_pooler.wq",
    "pooler/k": "patch_token_pooler.wk",
    "pooler/v": "patch_token_pooler.wv",
    "pooler/o": "patch_token_pooler.wo",
    "fc1": "mlp.w1",
    "fc2": "mlp.w2",
    "fc3": "mlp.w3",
}


def _theirs(our_name: str) -> tuple[str, bool]:
    """Our flat name ("pooler/q/kernel") -> (their tensor name, transposed?)."""
    module, leaf = our_name.rsplit("/", 1)
    if module not in MODULES or leaf not in ("kernel", "bias"):
        raise ValueError(f"scorer parameter {our_name!r} has no counterpart in the authors' TemporalTokenScorer.")
    return PREFIX + MODULES[module] + (".weight" if leaf == "kernel" else ".bias"), leaf == "kernel"


def scorer_to_torch(scorer: Mapping) -> dict[str, np.ndarray]:
    """Our scorer params (`params["scorer"]`) -> {their state-dict name: array in torch's layout}."""
    tensors = {}
    for name, value in flax.traverse_util.flatten_dict(scorer, sep="/").items():
        theirs, transposed = _theirs(name)
        value = np.asarray(value)
        tensors[theirs] = np.ascontiguousarray(value.T if transposed else value)
    return tensors


@functools.cache  # traces the whole model's init: a second or two, the same for every file of one model
def scorer_shapes(cfg: Molmo2Config) -> dict:
    """The scorer's param shapes and dtypes for `cfg`'s ViT and STTS settings (whatever its method); read only."""
    return param_shapes(cfg.with_stts(method="stts"))["scorer"]


def scorer_from_torch(tensors: Mapping[str, np.ndarray], cfg: Molmo2Config, source: str = "scorer") -> dict:
    """{their name: array} -> our scorer params in `cfg`'s param dtype, checking every name and shape."""
    expected = flax.traverse_util.flatten_dict(scorer_shapes(cfg), sep="/")
    remaining = dict(tensors)
    ours = {}
    for name, target in expected.items():
        theirs, transposed = _theirs(name)
        shape = tuple(target.shape[::-1] if transposed else target.shape)
        if theirs not in remaining:
            raise CheckpointError(
                f"{source}: tensor {theirs!r} is missing (expected shape {shape}); the file is not a scorer of this "
                "model. Re-export it with python -m stts_jax.export --format=hf."
            )
        value = np.asarray(remaining.pop(theirs))
        if value.shape != shape:
            raise CheckpointError(
                f"{source}: tensor {theirs!r} has shape {value.shape}, the model expects {shape}; the scorer was "
                "trained for another ViT size or stts.mlp_dim. Use the config.json and stts_config.json saved with it."
            )
        ours[name] = (value.T if transposed else value).astype(target.dtype)
    if remaining:
        raise CheckpointError(
            f"{source}: {len(remaining)} tensor(s) a TemporalTokenScorer does not have, e.g. {sorted(remaining)[:3]}; "
            f"a scorer file holds exactly the tensors under {PREFIX}*. Re-export it with python -m stts_jax.export."
        )
    return flax.traverse_util.unflatten_dict(ours, sep="/")


def save_scorer(scorer: Mapping, path: str) -> None:
    """Writes the scorer to `path` (safetensors, the authors' names and layouts; dtypes as given)."""
    from safetensors.numpy import save_file

    save_file(scorer_to_torch(scorer), path, {"format": "pt"})


def load_scorer(path: str, cfg: Molmo2Config) -> dict:
    """Reads a file `save_scorer` wrote -> our scorer params for `cfg`."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="flax") as f:
            tensors = {name: np.asarray(f.get_tensor(name)) for name in f.keys()}  # noqa: SIM118 (no __iter__)
    except Exception as e:  # safetensors raises its own error types for truncated / corrupt files
        raise CheckpointError(f"{path} could not be read as safetensors ({e}); re-export the run.") from e
    return scorer_from_torch(tensors, cfg, source=path)
