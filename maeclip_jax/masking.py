"""Per-example random masking of patch tokens, and patchify / unpatchify.

Masking follows MAE: uniform noise per patch, argsort, keep the first K. Each example gets its
own mask; `ids_restore` inverts the shuffle so a decoder can put tokens back in place.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp

# How `take_tokens` gathers the kept tokens of each example. Measured on the same MAE-CLIP train
# step (benchmarks/train_step.py, "masking" table; README "Performance"):
#   'gather': jnp.take_along_axis -> one XLA gather (its gradient is a scatter-add);
#   'onehot': einsum with a one-hot [B, K, N] matrix (FLIP's choice on TPUs, where gathers are
#             slow): a batched matmul, N times more FLOPs than the copy it replaces;
#   'shared': ONE permutation for the whole batch (a static-shape slice-gather). Not a per-example
#             mask, so it is only a speed reference and never the default.
# The default is the fastest of the per-example choices. 'gather': forward+backward of the
# encoder's gather (K=16 of N=64 tokens, width 384, batch 32) took 0.8 ms and the decoder's
# restore (N of N) 1.3 ms on the 2-core CPU, against 3.5 ms and 14.8 ms for 'onehot' (its
# [B, K, N] x [B, N, W] matmuls) and 0.8 / 1.1 ms for the batch-shared 'shared'; whole MAE-CLIP
# steps differ by less than the machine's noise, and 'onehot' adds FLOPs. So per-example masks
# cost nothing measurable over a shared one here; re-check 'onehot' on TPUs, where FLIP found
# gathers slow (benchmarks/train_step.py --sections=masking).
TAKE_IMPLS = ("gather", "onehot", "shared")
TAKE_IMPL = "gather"


class Mask(NamedTuple):
    """A batch of random masks over N tokens keeping K of them.

    ids_keep: `[B, K]` int32, indices of kept (visible) tokens, in shuffled order.
    ids_restore: `[B, N]` int32, the inverse permutation of the shuffle.
    mask: `[B, N]` float32, 1 where the token is MASKED (dropped), 0 where visible.
    """

    ids_keep: jax.Array
    ids_restore: jax.Array
    mask: jax.Array


def num_kept(num_tokens: int, mask_ratio: float) -> int:
    """Number of visible tokens for a ratio; at least one token always stays visible."""
    return max(1, int(round(num_tokens * (1.0 - mask_ratio))))


def random_mask(rng: jax.Array, batch: int, num_tokens: int, mask_ratio: float) -> Mask:
    """Draws an independent random mask for each of `batch` examples (one mask shared by the
    batch when TAKE_IMPL == 'shared', the benchmark's reference point)."""
    keep = num_kept(num_tokens, mask_ratio)
    if TAKE_IMPL == "shared":
        noise = jnp.broadcast_to(jax.random.uniform(rng, (1, num_tokens)), (batch, num_tokens))
    else:
        noise = jax.random.uniform(rng, (batch, num_tokens))
    ids_shuffle = jnp.argsort(noise, axis=1).astype(jnp.int32)
    ids_restore = jnp.argsort(ids_shuffle, axis=1).astype(jnp.int32)
    ids_keep = ids_shuffle[:, :keep]
    # mask in shuffled order is [0]*keep + [1]*(N-keep); unshuffle it.
    mask = (jnp.arange(num_tokens)[None, :] >= keep).astype(jnp.float32)
    mask = jnp.take_along_axis(jnp.broadcast_to(mask, (batch, num_tokens)), ids_restore, axis=1)
    return Mask(ids_keep, ids_restore, mask)


def take_tokens(x: jax.Array, ids: jax.Array, impl: str = None) -> jax.Array:
    """Per-example token gather: `x[b, ids[b, k]]`, `[B, N, W]`, `[B, K]` int -> `[B, K, W]`.

    `impl` (default TAKE_IMPL) picks the formulation; all give the same values (the one-hot
    einsum exactly so, as each output is 1.0 * x + 0.0 * others).
    """
    impl = impl or TAKE_IMPL
    if impl == "gather":
        return jnp.take_along_axis(x, ids[..., None], axis=1)
    if impl == "onehot":
        onehot = jax.nn.one_hot(ids, x.shape[1], dtype=x.dtype)  # [B, K, N]
        return jnp.einsum("bkn,bnw->bkw", onehot, x, precision=jax.lax.Precision.HIGHEST)
    if impl == "shared":  # every row of ids is the same permutation
        return jnp.take(x, ids[0], axis=1)
    raise ValueError(f"masking.take_tokens: unknown impl {impl!r}; known: {TAKE_IMPLS}")


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
    """`[B, H, W, C]` -> `[B, (H/p)*(W/p), p*p*C]`, patches row-major, pixels (row, col, chan)."""
    b, h, w, c = images.shape
    p = patch_size
    x = images.reshape(b, h // p, p, w // p, p, c)
    x = x.transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: jax.Array, patch_size: int, grid_hw: tuple, channels: int = 3) -> jax.Array:
    """Inverse of `patchify`: `[B, N, p*p*C]` -> `[B, H, W, C]`."""
    b = patches.shape[0]
    gh, gw = grid_hw
    p = patch_size
    x = patches.reshape(b, gh, gw, p, p, channels).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, gh * p, gw * p, channels)
