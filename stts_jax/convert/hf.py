"""Hugging Face interop: read and write Molmo2 checkpoints in the format `transformers` saves and loads.

`save_pretrained` writes Molmo2 under the released checkpoints' tensor names (`model.transformer.*`,
`model.vision_backbone.*`, fused `att_proj` / `ff_proj`, split input embedding), and
`from_pretrained` reads them; this module speaks that format. Weights are [out, in] there and
[in, out] (Flax kernels) here; our blocks are stacked on a leading layer axis.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from stts_jax.convert.hf_config import config_from_hf, config_to_hf
from stts_jax.errors import CheckpointError, ConfigError
from stts_jax.models.config import DTYPES, Molmo2Config
from stts_jax.vlm.model import Molmo2, VideoBatch, param_shapes

HF_CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

VIT = "model.vision_backbone.image_vit."
ADAPTER = "model.vision_backbone."
LLM = "model.transformer."


# -- the tensor mapping -----------------------------------------------------------------------------------


def _linear(hf_prefix: str, our: tuple[str, ...], bias: bool) -> list[tuple[str, tuple[str, ...], str]]:
    rules = [(hf_prefix + ".weight", our + ("kernel",), "T")]
    if bias:
        rules.append((hf_prefix + ".bias", our + ("bias",), ""))
    return rules


def _mapping(cfg: Molmo2Config) -> list[tuple[str, tuple[str, ...], str]]:
    """(HF tensor name or per-layer template with {i}, our param path, transform) for single tensors.

    transform: "" copy, "T" transpose. The fused and split text tensors are handled by the callers.
    """
    v, a = cfg.vision, cfg.adapter
    rules = [(VIT + "positional_embedding", ("vit", "positional_embedding"), "")]
    rules += _linear(VIT + "patch_embedding", ("vit", "patch_embedding"), True)
    block = VIT + "transformer.resblocks.{i}."
    for ours, theirs in (("q", "wq"), ("k", "wk"), ("v", "wv"), ("o", "wo")):
        rules += _linear(block + "attention." + theirs, ("vit", "blocks", "attn", ours), v.attention_bias)
    for ours, theirs in (("layer_norm1", "attention_norm"), ("layer_norm2", "ffn_norm")):
        rules += [(block + theirs + ".weight", ("vit", "blocks", ours, "scale"), "")]
        rules += [(block + theirs + ".bias", ("vit", "blocks", ours, "bias"), "")]
    rules += _linear(block + "feed_forward.w1", ("vit", "blocks", "fc1"), True)
    rules += _linear(block + "feed_forward.w2", ("vit", "blocks", "fc2"), True)
    for ours, theirs in (("q", "wq"), ("k", "wk"), ("v", "wv"), ("o", "wo")):
        rules += _linear(ADAPTER + "image_pooling_2d." + theirs, ("connector", "pooling", ours), a.attention_bias)
    for ours, theirs in (("gate", "w1"), ("down", "w2"), ("up", "w3")):
        bias = a.mlp_bias and ours != "down"
        rules += _linear(ADAPTER + "image_projector." + theirs, ("connector", "projector", ours), bias)
    layer = LLM + "blocks.{i}."
    rules += [(layer + "attn_norm.weight", ("text", "blocks", "input_norm", "scale"), "")]
    rules += [(layer + "ff_norm.weight", ("text", "blocks", "post_attention_norm", "scale"), "")]
    rules += [(layer + "self_attn.q_norm.weight", ("text", "blocks", "q_norm", "scale"), "")]
    rules += [(layer + "self_attn.k_norm.weight", ("text", "blocks", "k_norm", "scale"), "")]
    rules += _linear(layer + "self_attn.attn_out", ("text", "blocks", "o"), False)
    rules += _linear(layer + "mlp.ff_out", ("text", "blocks", "mlp", "down"), False)
    rules += [(LLM + "ln_f.weight", ("text", "final_norm", "scale"), "")]
    rules += _linear("lm_head", ("lm_head",), False)
    return rules


def _layers(cfg: Molmo2Config, our_path: tuple[str, ...]) -> int | None:
    if our_path[:2] == ("vit", "blocks"):
        return cfg.vit_depth
    if our_path[:2] == ("text", "blocks"):
        return cfg.text.num_hidden_layers
    return None


def _get(tree: Mapping, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def params_to_hf(cfg: Molmo2Config, params: Mapping) -> dict[str, np.ndarray]:
    """Our params -> {HF tensor name: array} in the layout `from_pretrained` reads."""
    params = jax.tree.map(np.asarray, params)
    tensors: dict[str, np.ndarray] = {}
    for name, path, transform in _mapping(cfg):
        value = _get(params, path)
        fix = (lambda x: x.T) if transform == "T" else (lambda x: x)
        n = _layers(cfg, path)
        if n is None:
            tensors[name] = fix(value)
        else:
            for i in range(n):
                tensors[name.format(i=i)] = fix(value[i])
    t = cfg.text
    text = params["text"]
    for i in range(t.num_hidden_layers):
        layer = f"{LLM}blocks.{i}."
        qkv = [text["blocks"][p]["kernel"][i].T for p in ("q", "k", "v")]
        tensors[layer + "self_attn.att_proj.weight"] = np.concatenate(qkv, axis=0)
        if t.attention_bias:
            tensors[layer + "self_attn.att_proj.bias"] = np.concatenate(
                [text["blocks"][p]["bias"][i] for p in ("q", "k", "v")]
            )
        up_gate = [text["blocks"]["mlp"][p]["kernel"][i].T for p in ("up", "gate")]
        tensors[layer + "mlp.ff_proj.weight"] = np.concatenate(up_gate, axis=0)
    embedding = text["embed"]["embedding"]
    tensors[LLM + "wte.embedding"] = embedding[: t.vocab_size]
    tensors[LLM + "wte.new_embedding"] = embedding[t.vocab_size :]
    return {k: np.ascontiguousarray(v) for k, v in tensors.items()}


def hf_to_params(cfg: Molmo2Config, tensors: Mapping[str, np.ndarray], source: str = "checkpoint") -> dict:
    """{HF tensor name: array} -> our params, checking names and shapes against the model."""
    expected = param_shapes(cfg)
    remaining = dict(tensors)
    params: dict = {}

    def take(name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in remaining:
            raise CheckpointError(
                f"{source}: tensor {name!r} is missing (expected shape {shape}). The checkpoint was saved "
                "from a different architecture or is incomplete; re-export it with save_pretrained."
            )
        value = np.asarray(remaining.pop(name))
        if tuple(value.shape) != tuple(shape):
            raise CheckpointError(
                f"{source}: tensor {name!r} has shape {tuple(value.shape)}, the model expects {tuple(shape)}. "
                "config.json does not describe these weights; use the config.json saved with them."
            )
        return value

    for name, path, transform in _mapping(cfg):
        target = _get(expected, path)
        n = _layers(cfg, path)
        shape = target.shape[1:] if n is not None else target.shape
        hf_shape = shape[::-1] if transform == "T" else shape
        fix: Callable = (lambda x: x.T) if transform == "T" else (lambda x: x)
        if n is None:
            value = fix(take(name, hf_shape))
        else:
            value = np.stack([fix(take(name.format(i=i), hf_shape)) for i in range(n)])
        _set(params, path, value.astype(target.dtype))

    t = cfg.text
    blocks = expected["text"]["blocks"]
    fused: dict[str, list[np.ndarray]] = {}
    widths = {p: blocks[p]["kernel"].shape[-1] for p in ("q", "k", "v")}
    d, m = t.hidden_size, t.intermediate_size
    for i in range(t.num_hidden_layers):
        layer = f"{LLM}blocks.{i}."
        qkv = take(layer + "self_attn.att_proj.weight", (sum(widths.values()), d))
        up_gate = take(layer + "mlp.ff_proj.weight", (2 * m, d))
        splits = np.split(qkv, np.cumsum([widths["q"], widths["k"]]), axis=0)
        for p, w in zip(("q", "k", "v"), splits, strict=True):
            fused.setdefault(p, []).append(w.T)
        if t.attention_bias:
            bias = take(layer + "self_attn.att_proj.bias", (sum(widths.values()),))
            for p, b in zip(("q", "k", "v"), np.split(bias, np.cumsum([widths["q"], widths["k"]])), strict=True):
                fused.setdefault(p + "_bias", []).append(b)
        fused.setdefault("up", []).append(up_gate[:m].T)
        fused.setdefault("gate", []).append(up_gate[m:].T)
    dtype = blocks["q"]["kernel"].dtype
    for p in ("q", "k", "v"):
        _set(params, ("text", "blocks", p, "kernel"), np.stack(fused[p]).astype(dtype))
        if t.attention_bias:
            _set(params, ("text", "blocks", p, "bias"), np.stack(fused[p + "_bias"]).astype(dtype))
    for p in ("up", "gate"):
        _set(params, ("text", "blocks", "mlp", p, "kernel"), np.stack(fused[p]).astype(dtype))
    if LLM + "wte.embedding" not in remaining:
        take(LLM + "wte.embedding", (t.vocab_size, d))
    table = [remaining.pop(LLM + "wte.embedding")]
    if LLM + "wte.new_embedding" in remaining:
        table.append(remaining.pop(LLM + "wte.new_embedding"))
    embedding = np.concatenate([np.asarray(x) for x in table], axis=0)
    want = (t.vocab_size + t.additional_vocab_size, d)
    if embedding.shape != want:
        raise CheckpointError(
            f"{source}: wte.embedding + wte.new_embedding give shape {embedding.shape}, the model expects {want} "
            "(vocab_size + additional_vocab_size rows). Use the config.json saved with these weights."
        )
    _set(params, ("text", "embed", "embedding"), embedding.astype(expected["text"]["embed"]["embedding"].dtype))
    unused_vit_blocks = re.compile(re.escape(VIT) + r"transformer\.resblocks\.(\d+)\.")
    for name in list(remaining):  # blocks past the deepest feature layer are never run (see config)
        match = unused_vit_blocks.match(name)
        if match and int(match.group(1)) >= cfg.vit_depth:
            del remaining[name]
    if remaining:
        names = sorted(remaining)
        raise CheckpointError(
            f"{source}: {len(names)} tensor(s) the model does not use, e.g. {names[:5]}. The config.json does "
            "not describe these weights (more layers? another architecture?); use the config.json saved with them."
        )
    return params


# -- files ------------------------------------------------------------------------------------------------


def cast_floating(params: Any, dtype: str | None) -> Any:
    """`params` with every floating leaf cast to `dtype` (one of DTYPES; None: unchanged), as host arrays.
    Integer leaves stay as they are (there are none today; ids must never be rounded)."""
    if dtype is None:
        return params
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r} is not an export dtype; choose one of {DTYPES} (nothing was written).")
    cast = lambda x: np.asarray(x).astype(jnp.dtype(dtype)) if jnp.issubdtype(x.dtype, jnp.floating) else x
    return jax.tree.map(cast, params)


def read_config(path: str, **runtime: Any) -> Molmo2Config:
    config_path = os.path.join(path, HF_CONFIG_FILE)
    if not os.path.isdir(path):
        raise CheckpointError(f"{path!r} is not a directory. Pass the folder save_pretrained wrote.")
    if not os.path.exists(config_path):
        raise CheckpointError(
            f"{config_path} not found: a Molmo2 checkpoint directory holds config.json beside its safetensors. "
            f"Found: {sorted(os.listdir(path))[:10]}."
        )
    try:
        with open(config_path) as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config_path} is not valid JSON ({e}). Re-export the checkpoint.") from e
    try:
        return config_from_hf(raw, **runtime)
    except ConfigError as e:
        raise CheckpointError(f"{config_path}: {e}") from e


def read_tensors(path: str) -> dict[str, np.ndarray]:
    """All tensors of a checkpoint directory (single file or sharded with an index)."""
    from safetensors import safe_open

    index_path = os.path.join(path, INDEX_FILE)
    if os.path.exists(index_path):
        with open(index_path) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.exists(os.path.join(path, WEIGHTS_FILE)):
        files = [WEIGHTS_FILE]
    else:
        raise CheckpointError(
            f"{path}: neither {WEIGHTS_FILE} nor {INDEX_FILE} found. Save the model with "
            "save_pretrained(..., safe_serialization=True)."
        )
    tensors: dict[str, np.ndarray] = {}
    for name in files:
        file_path = os.path.join(path, name)
        if not os.path.exists(file_path):
            raise CheckpointError(f"{file_path} is listed in {INDEX_FILE} but missing. Copy the whole directory.")
        try:
            with safe_open(file_path, framework="flax") as f:
                for key in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                    tensors[key] = np.asarray(f.get_tensor(key))
        except Exception as e:  # safetensors raises its own error types for truncated / corrupt files
            raise CheckpointError(f"{file_path} could not be read as safetensors ({e}).") from e
    return tensors


def load_molmo2(path: str, **runtime: Any) -> tuple[Molmo2Config, dict]:
    """Reads a Molmo2 directory written by transformers' `save_pretrained` -> (config, params).

    `runtime` sets our run-time fields (`dtype`, `param_dtype`, `scan_layers`, ...); params are
    returned as host NumPy arrays in `param_dtype`, blocks stacked on a leading layer axis.
    """
    cfg = read_config(path, **runtime)
    return cfg, hf_to_params(cfg, read_tensors(path), source=path)


def save_molmo2(cfg: Molmo2Config, params: Mapping, path: str, max_shard_bytes: int = 5 << 30) -> None:
    """Writes config.json + safetensors that `Molmo2ForConditionalGeneration.from_pretrained` loads."""
    from safetensors.flax import save_file

    os.makedirs(path, exist_ok=True)
    tensors = params_to_hf(cfg, params)
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name in sorted(tensors):
        nbytes = tensors[name].nbytes
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensors[name]
        size += nbytes
    metadata = {"format": "pt"}
    if len(shards) == 1:
        save_file({k: jnp.asarray(v) for k, v in shards[0].items()}, os.path.join(path, WEIGHTS_FILE), metadata)
    else:
        weight_map = {}
        for n, shard in enumerate(shards, start=1):
            file_name = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
            save_file({k: jnp.asarray(v) for k, v in shard.items()}, os.path.join(path, file_name), metadata)
            weight_map.update(dict.fromkeys(shard, file_name))
        total = sum(v.nbytes for v in tensors.values())
        with open(os.path.join(path, INDEX_FILE), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    config = config_to_hf(cfg)
    floating = {str(v.dtype) for v in tensors.values() if jnp.issubdtype(v.dtype, jnp.floating)}
    if len(floating) == 1:  # what from_pretrained(dtype="auto") loads: "dtype" in transformers 5, "torch_dtype" before
        config["dtype"] = config["torch_dtype"] = floating.pop()
    with open(os.path.join(path, HF_CONFIG_FILE), "w") as f:
        json.dump(config, f, indent=2)


# -- transformers processor outputs -----------------------------------------------------------------------


def batch_from_hf_inputs(cfg: Molmo2Config, inputs: Mapping[str, Any]) -> VideoBatch:
    """Our `VideoBatch` from the dict transformers' Molmo2 processor returns for video prompts.

    Expects `input_ids`, `pixel_values_videos` [all frames, patches, patch_dim], `video_token_pooling`
    [all tokens, window] (each video's rows index that video's own patches, as transformers >= 5.25
    writes them), `video_grids` [videos, 3] and optionally `attention_mask`. Row r holds the r-th video,
    as transformers fills placeholders in order. Positions are 0..len-1 as in transformers' forward
    without `position_ids`.
    """
    input_ids = np.asarray(inputs["input_ids"], np.int32)
    b, s = input_ids.shape
    mask = np.asarray(inputs.get("attention_mask", np.ones((b, s))), np.int32)
    pixels = np.asarray(inputs["pixel_values_videos"], np.float32)
    pooling = np.asarray(inputs["video_token_pooling"], np.int64)
    grids = np.asarray(inputs["video_grids"], np.int64).reshape(-1, 3)
    if len(grids) != b:
        raise ValueError(f"{len(grids)} videos for {b} rows: this path takes exactly one video per row.")
    n = pixels.shape[1]
    if n != cfg.vision.num_patches or pixels.shape[2] != cfg.vision.patch_dim:
        raise ValueError(
            f"pixel_values_videos has {n} patches of {pixels.shape[2]} values per frame; the model expects "
            f"{cfg.vision.num_patches} x {cfg.vision.patch_dim}. Use a processor with the model's image/patch size."
        )
    frames = grids[:, 0]
    tokens = grids[:, 0] * grids[:, 1] * grids[:, 2]  # grids hold (frames, pooled rows, pooled cols)
    frame_start, token_start = np.cumsum(frames) - frames, np.cumsum(tokens) - tokens
    pixel_rows = np.zeros((b, frames.max(), n, pixels.shape[2]), np.float32)
    pooling_rows = np.full((b, tokens.max(), pooling.shape[1]), -1, np.int32)
    for r in range(b):
        pixel_rows[r, : frames[r]] = pixels[frame_start[r] : frame_start[r] + frames[r]]
        window = pooling[token_start[r] : token_start[r] + tokens[r]]
        if window.max(initial=-1) >= frames[r] * n:
            raise ValueError(
                f"video_token_pooling of video {r} reaches patch {window.max()}, past its {frames[r]} frames x {n} "
                "patches: the indices count over all videos, as transformers < 5.25 wrote them. Make them count "
                "from each video's first patch (transformers >= 5.25's processor does)."
            )
        pooling_rows[r, : tokens[r]] = np.where(window >= 0, window, -1)
    return VideoBatch(
        input_ids=jnp.asarray(input_ids),
        segment_ids=jnp.asarray(mask),
        positions=jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s)),
        pixel_values=jnp.asarray(pixel_rows),
        pooling_idx=jnp.asarray(pooling_rows),
        frame_video_ids=jnp.asarray((np.arange(frames.max())[None] < frames[:, None]).astype(np.int32)),
    )


def hf_video_logits(cfg: Molmo2Config, params: Mapping, inputs: Mapping[str, Any]) -> np.ndarray:
    """The logits `Molmo2ForConditionalGeneration(**inputs)` returns, computed by our model."""
    batch = batch_from_hf_inputs(cfg, inputs)
    logits, _ = _forward(cfg)({"params": params}, batch)
    return np.asarray(logits)


_FORWARDS: dict[Molmo2Config, Callable] = {}


def _forward(cfg: Molmo2Config) -> Callable:
    if cfg not in _FORWARDS:
        _FORWARDS[cfg] = jax.jit(Molmo2(cfg).apply)
    return _FORWARDS[cfg]
