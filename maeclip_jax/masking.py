"""Per-example random masking of patch tokens and of text tokens, and patchify / unpatchify.

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
    if TAKE_IMPL == "shared":
        noise = jnp.broadcast_to(jax.random.uniform(rng, (1, num_tokens)), (batch, num_tokens))
    else:
        noise = jax.random.uniform(rng, (batch, num_tokens))
    return mask_from_noise(noise, num_kept(num_tokens, mask_ratio))


def mask_from_noise(noise: jax.Array, keep: int) -> Mask:
    """The mask keeping, in each row of `noise` `[B, N]`, the `keep` tokens of lowest noise."""
    batch, num_tokens = noise.shape
    ids_shuffle = jnp.argsort(noise, axis=1).astype(jnp.int32)
    ids_restore = jnp.argsort(ids_shuffle, axis=1).astype(jnp.int32)
    ids_keep = ids_shuffle[:, :keep]
    # mask in shuffled order is [0]*keep + [1]*(N-keep); unshuffle it.
    mask = (jnp.arange(num_tokens)[None, :] >= keep).astype(jnp.float32)
    mask = jnp.take_along_axis(jnp.broadcast_to(mask, (batch, num_tokens)), ids_restore, axis=1)
    return Mask(ids_keep, ids_restore, mask)


class TextMask(NamedTuple):
    """A batch of random masks over padded token sequences `[B, L]`.

    Only real (non-padding) tokens are ever visible or masked: each example keeps exactly
    `num_kept(n_valid, ratio)` of its `n_valid` real tokens visible (0 if it has none) and masks
    the rest. The gather `ids_keep` has a fixed length K = num_kept(L, ratio) (so shapes are
    static); its slots beyond an example's own count are flagged not `visible` and must be
    treated as masked (no attention to them, a mask token in the decoder).

    ids_keep: `[B, K]` int32, positions gathered for the encoder (visible ones first).
    visible: `[B, K]` bool, whether each gathered slot is a visible real token.
    ids_restore: `[B, L]` int32, the inverse permutation of the shuffle.
    mask: `[B, L]` float32, 1 where a REAL token is masked (the loss targets), else 0.
    valid: `[B, L]` bool, real (non-padding) tokens.
    """

    ids_keep: jax.Array
    visible: jax.Array
    ids_restore: jax.Array
    mask: jax.Array
    valid: jax.Array


def random_text_mask(rng: jax.Array, tokens: jax.Array, mask_ratio: float,
                     pad_id: int = 0) -> TextMask:
    """Per-example random masking of token ids `[B, L]`; padding is never visible nor masked.

    Padding gets noise above every real token's, so real tokens are gathered first; the same
    rule as `random_mask` (uniform noise, argsort) picks which real tokens stay visible.
    """
    batch, length = tokens.shape
    valid = tokens != pad_id
    n_valid = jnp.sum(valid, axis=1)
    keep_each = jnp.where(n_valid > 0, jnp.maximum(
        1, jnp.round(n_valid * (1.0 - mask_ratio)).astype(jnp.int32)), 0)  # num_kept per row
    noise = jax.random.uniform(rng, (batch, length)) + jnp.where(valid, 0.0, 2.0)
    m = mask_from_noise(noise, num_kept(length, mask_ratio))
    visible = jnp.arange(m.ids_keep.shape[1])[None, :] < keep_each[:, None]
    # Rank of every position in the shuffle: visible iff rank < its row's keep count.
    rank = m.ids_restore
    masked = jnp.logical_and(valid, rank >= keep_each[:, None]).astype(jnp.float32)
    return TextMask(m.ids_keep, visible, m.ids_restore, masked, valid)


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
