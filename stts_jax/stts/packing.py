"""Packing the kept patches of all frames of a row into one static buffer, and back.

Kept patches are laid out frame after frame, with `segment_ids` = source frame + 1 (0 = padding
slot), and every frame starts at a multiple of the layout's `granule`, a divisor of N (patches per
frame). Attention then runs in chunks of `granule` slots that each hold a single frame, against a
window of N keys starting where that frame starts: every kept query costs N keys, as in the unpruned
ViT, and at k = 0 the buffer is exactly the unpruned frames (see `attend_packed_frames`).

The price is the alignment: a frame of m kept patches takes ceil(m / granule) * granule slots. Every
frame keeps a multiple of `unit` patches (the gcd of the windows' real patch counts: 9 at Molmo2's
27 x 27 grid of 3 x 3 windows), so a frame wastes at most granule - unit slots, and `slots` sizes the
buffer for that worst case: it can never overflow while the kept windows fit their own budget.
"""

from __future__ import annotations

import dataclasses
import math

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class FrameLayout:
    """The static facts of the packed buffer. patches: N per frame; unit: every frame keeps a multiple
    of it; granule: frames start at multiples of it (unit | granule | N); window_patches: the most real
    patches one window has."""

    patches: int
    unit: int
    granule: int
    window_patches: int

    @classmethod
    def of(cls, window_idx: np.ndarray, patches: int) -> FrameLayout:
        """The layout for a frame of `patches` patches cut into windows ([windows, window] patch indices,
        -1 = none; every patch in exactly one window, as the connector pools them). The granule is
        the largest multiple of `unit` dividing N that is at most sqrt(N): a frame then wastes at most
        about sqrt(N) slots, and the XLA path gathers a window of N keys per chunk of about sqrt(N)
        queries (memory of about sqrt(N) times the keys), the two costs balanced."""
        window_idx = np.asarray(window_idx)
        owned = np.sort(window_idx[window_idx >= 0])
        if not np.array_equal(owned, np.arange(patches)):
            raise ValueError(f"the pooling windows do not cover each of the {patches} patches exactly once")
        counts = (window_idx >= 0).sum(1)
        n, unit = patches, math.gcd(*map(int, counts))
        granules = [g for g in range(unit, math.isqrt(n) + 1, unit) if n % g == 0]
        return cls(n, unit, max(granules, default=unit), int(counts.max()))

    def slots(self, kept_windows: int, frames: int) -> int:
        """Static packed length of a row of `frames` frame slots keeping at most `kept_windows` windows:
        their patches plus the worst alignment waste, never more than the unpruned frames."""
        waste = frames * (self.granule - self.unit)
        return min(
            frames * self.patches, -(-(kept_windows * self.window_patches + waste) // self.granule) * self.granule
        )


@flax.struct.dataclass
class Packing:
    """Where each packed slot comes from. index: [batch, slots] row-flattened (frame * N + patch) source,
    or frames * N for padding; segment_ids: [batch, slots] source frame + 1, 0 = padding."""

    index: Array
    segment_ids: Array

    @property
    def valid(self) -> Array:
        return self.segment_ids > 0


def plan_packing(patch_keep: Array, slots: int, granule: int) -> Packing:
    """patch_keep: [batch, frames, patches] bool -> the packing of the kept patches into `slots` per row,
    each frame starting at a multiple of `granule`, its kept patches in patch order."""
    b, f, n = patch_keep.shape
    kept = patch_keep.sum(-1)  # [b, f]
    end = jnp.cumsum(-(-kept // granule) * granule, axis=-1)
    start = end - -(-kept // granule) * granule
    slot = jnp.arange(slots)
    frame = jnp.minimum(jax.vmap(lambda e: jnp.searchsorted(e, slot, side="right"))(end), f - 1)  # [b, slots]
    offset = slot - jnp.take_along_axis(start, frame, axis=1)
    valid = (offset >= 0) & (offset < jnp.take_along_axis(kept, frame, axis=1))
    order = jnp.argsort(~patch_keep, axis=-1, stable=True)  # each frame's kept patches first, in patch order
    patch = jnp.take_along_axis(order.reshape(b, f * n), frame * n + jnp.clip(offset, 0, n - 1), axis=1)
    index = jnp.where(valid, frame * n + patch, f * n).astype(jnp.int32)
    return Packing(index=index, segment_ids=jnp.where(valid, frame + 1, 0).astype(jnp.int32))


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
