"""The STTS scorer, the temporal signal it learns from, and the score bias of block l+1."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from stts_jax.models.config import Molmo2Config
from stts_jax.models.connector import window_mean
from stts_jax.models.layers import dtypes, vision_attention

Array = jax.Array


def previous_frame(x: Array, frame_times: Array) -> Array:
    """x [batch, frames, ...] shifted one frame later; zeros where the frame is its video's first."""
    shifted = jnp.concatenate([jnp.zeros_like(x[:, :1]), x[:, :-1]], axis=1)
    first = (frame_times == 0).reshape(*frame_times.shape, *([1] * (x.ndim - 2)))
    return jnp.where(first, 0, shifted)


class Scorer(nn.Module):
    """One score in (0, 1) per window: pool each window, then MLP([previous frame || current frame]).

    window_patches: [batch, frames, windows, window, dim] block-l features (padding patches zero);
    window_valid: [windows, window] bool; frame_times: [batch, frames] (0 = a video's first frame).
    Returns scores [batch, frames, windows].
    """

    cfg: Molmo2Config

    @nn.compact
    def __call__(self, window_patches: Array, window_valid: Array, frame_times: Array) -> Array:
        v, s = self.cfg.vision, self.cfg.stts
        kw = dtypes(self.cfg)
        b, f, w, p, d = window_patches.shape
        patches = window_patches.reshape(b * f * w, p, d)
        valid = jnp.broadcast_to(window_valid, (b * f, w, p)).reshape(b * f * w, p)
        pooled = vision_attention(self.cfg, "pooler")(
            window_mean(patches, valid), patches, mask=valid[:, None, None, :]
        )
        pooled = pooled.reshape(b, f, w, d)
        h = jnp.concatenate([previous_frame(pooled, frame_times), pooled], axis=-1)
        hidden = s.mlp_dim or v.intermediate_size
        # Reference init: truncated normal with std sqrt(1 / fan_in), zero biases.
        dense = lambda n, name: nn.Dense(
            n, kernel_init=nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"), name=name, **kw
        )
        h = jax.nn.silu(dense(hidden, "fc1")(h))
        h = jax.nn.silu(dense(hidden, "fc2")(h))
        # The last layer in float32: bf16 logits would tie many windows at the budget boundary.
        logit = nn.Dense(
            1,
            kernel_init=nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"),
            dtype=jnp.float32,
            param_dtype=kw["param_dtype"],
            name="fc3",
        )(h.astype(jnp.float32))
        return jax.nn.sigmoid(logit[..., 0])


def temporal_dissimilarity(window_patches: Array, frame_times: Array) -> Array:
    """1 - cos(x[t-1, i], x[t, i]) per window, on the window's patches concatenated: [batch, frames, windows].

    The auxiliary target and the `heuristic` baseline's score; meaningless (0) on a video's first frame.
    """
    b, f, w = window_patches.shape[:3]
    x = window_patches.reshape(b, f, w, -1).astype(jnp.float32)
    prev = previous_frame(x, frame_times)
    cos = jnp.sum(prev * x, -1) / jnp.maximum(jnp.linalg.norm(prev, axis=-1) * jnp.linalg.norm(x, axis=-1), 1e-8)
    return jnp.where(frame_times[..., None] > 0, 1.0 - cos, 0.0)


def aux_squared_error(
    scores: Array, target: Array, frame_times: Array, frame_real: Array, stop_gradient: bool
) -> Array:
    """Sum over windows of real frames t >= 1 of (score - target)^2 (frame 0 contributes nothing); the aux
    loss is this over `aux_windows` of the batch (of the whole batch, when this is a micro-batch)."""
    if stop_gradient:
        target = jax.lax.stop_gradient(target)
    counted = (frame_real & (frame_times > 0))[..., None]
    return jnp.where(counted, (scores - target) ** 2, 0.0).sum()


def score_bias(
    scores: Array, patch_window: np.ndarray, grid: tuple[int, int], frame_times: Array, frame_real: Array, cfg
) -> Array:
    """Per-key attention bias for block l+1: log of the scores rescaled to [bias_min, 1].

    scores: [batch, frames, windows]; returns [batch, frames, patches] (all patches of a window share
    it). Rescaled by min-max per frame, or per patch row ("row", the reference's quirk). Zero on a
    video's first frame and on padding frames.
    """
    s = scores[:, :, patch_window]  # [b, f, patches]
    b, f, n = s.shape
    groups = s.reshape(b, f, grid[0], grid[1]) if cfg.bias_granularity == "row" else s[:, :, None, :]
    low, high = groups.min(-1, keepdims=True), groups.max(-1, keepdims=True)
    unit = jnp.where(high > low, (groups - low) / jnp.where(high > low, high - low, 1.0), 1.0)
    bias = jnp.log(cfg.bias_min + (1.0 - cfg.bias_min) * unit).reshape(b, f, n)
    return jnp.where((frame_real & (frame_times > 0))[..., None], bias, 0.0)
