"""Packing the kept patches of all frames of a row into one static buffer, and back.

Kept patches are laid out flat, frame after frame, with `segment_ids` = source frame + 1 (0 =
padding slot). A frame never holds more than N patches, so a chunked attention whose query chunk
of C >= N slots sees its own and both neighbouring chunks reaches every patch of its frames. The
blocks after pruning cost O(kept) in their projections and MLPs and O(kept * 3C) in attention
(3C = 2304 keys per query at N = 729, against N when unpruned: see BENCHMARKS.md).
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from stts_jax.models.attention import chunk_size

Array = jax.Array


def buffer_size(kept_window_capacity: int, window: int, patches_per_frame: int) -> int:
    """Static packed length per row: room for every kept window's patches, in whole chunks."""
    c = chunk_size(patches_per_frame)
    return -(-(kept_window_capacity * window) // c) * c


@flax.struct.dataclass
class Packing:
    """Where each packed slot comes from. index: [batch, slots] row-flattened (frame * N + patch) source,
    or frames * N for padding; segment_ids: [batch, slots] source frame + 1, 0 = padding."""

    index: Array
    segment_ids: Array

    @property
    def valid(self) -> Array:
        return self.segment_ids > 0


def plan_packing(patch_keep: Array, slots: int) -> Packing:
    """patch_keep: [batch, frames, patches] bool -> the packing of the kept patches into `slots` per row."""
    b, f, n = patch_keep.shape
    flat = patch_keep.reshape(b, f * n)
    index = jax.vmap(lambda k: jnp.nonzero(k, size=slots, fill_value=f * n)[0])(flat).astype(jnp.int32)
    valid = jnp.arange(slots)[None] < flat.sum(-1, keepdims=True)
    return Packing(index=index, segment_ids=jnp.where(valid, index // n + 1, 0).astype(jnp.int32))


def pack(x: Array, packing: Packing) -> Array:
    """x: [batch, frames * patches, dim] -> [batch, slots, dim] (padding slots zero)."""
    padded = jnp.pad(x, ((0, 0), (0, 1), (0, 0)))
    return jnp.take_along_axis(padded, packing.index[..., None], axis=1)


def unpack(packed: Array, packing: Packing, total: int) -> Array:
    """[batch, slots, dim] -> [batch, total, dim]: kept patches back in place, pruned ones zero."""
    zeros = jnp.zeros((packed.shape[0], total, packed.shape[-1]), packed.dtype)
    return jax.vmap(lambda z, i, p: z.at[i].set(p, mode="drop"))(zeros, packing.index, packed)


def packing_efficiency(packing: Packing) -> Array:
    """Real tokens / slots."""
    return packing.valid.mean()


def patch_keep_mask(keep: Array, patch_window: np.ndarray) -> Array:
    """Window keep mask [batch, frames, windows] -> patch keep mask [batch, frames, patches]."""
    return keep[:, :, patch_window]
