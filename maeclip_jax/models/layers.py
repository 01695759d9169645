"""Transformer building blocks shared by every tower: blocks, encoders, position embeddings.

Shapes are written as `[batch, tokens, width]`. Every module takes a `dtype` for the
computation; parameters stay float32 (the optimizer's master copy).
"""
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any

# Sizes by name, as big_vision names them: width, depth, mlp_dim, heads.
VARIANTS = {
    # Tiny towers for tests and the CPU demo.
    "test": dict(width=32, depth=1, mlp_dim=64, num_heads=2),
    "mu": dict(width=128, depth=3, mlp_dim=512, num_heads=4),
    # big_vision / ViT paper sizes.
    "Ti": dict(width=192, depth=12, mlp_dim=768, num_heads=3),
    "S": dict(width=384, depth=12, mlp_dim=1536, num_heads=6),
    "M": dict(width=512, depth=12, mlp_dim=2048, num_heads=8),
    "B": dict(width=768, depth=12, mlp_dim=3072, num_heads=12),
    "L": dict(width=1024, depth=24, mlp_dim=4096, num_heads=16),
    "H": dict(width=1280, depth=32, mlp_dim=5120, num_heads=16),
}


def decode_variant(variant: str) -> dict:
    """'B/16' -> dict(width=768, depth=12, mlp_dim=3072, num_heads=12, patch_size=16).

    A variant without '/' (text towers) has no patch size.
    """
    name, _, patch = variant.partition("/")
    if name not in VARIANTS:
        raise ValueError(f"Unknown model variant {variant!r}; known sizes: {sorted(VARIANTS)}")
    out = dict(VARIANTS[name])
    if patch:
        out["patch_size"] = int(patch)
    return out


def sincos_1d(length: int, width: int, temperature: float = 10_000.0) -> np.ndarray:
    """Fixed 1-D sin-cos position embedding, `[length, width]` (width even)."""
    if width % 2:
        raise ValueError(f"sin-cos embedding width must be even, got {width}")
    omega = 1.0 / temperature ** (np.arange(width // 2, dtype=np.float64) / (width // 2))
    angles = np.arange(length, dtype=np.float64)[:, None] * omega[None, :]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1).astype(np.float32)


def sincos_2d(grid_h: int, grid_w: int, width: int, temperature: float = 10_000.0) -> np.ndarray:
    """Fixed 2-D sin-cos position embedding (MAE), `[grid_h * grid_w, width]`, row-major.

    Half the channels encode the row, half the column (width divisible by 4).
    """
    if width % 4:
        raise ValueError(f"2-D sin-cos embedding width must be divisible by 4, got {width}")
    rows = sincos_1d(grid_h, width // 2, temperature)  # [H, W/2]
    cols = sincos_1d(grid_w, width // 2, temperature)  # [W, W/2]
    emb = np.concatenate(
        [np.repeat(rows[:, None, :], grid_w, axis=1), np.repeat(cols[None, :, :], grid_h, axis=0)],
        axis=-1,
    )
    return emb.reshape(grid_h * grid_w, width)


class MlpBlock(nn.Module):
    """Dense -> GELU -> Dense, `[..., width] -> [..., width]`."""

    mlp_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = x.shape[-1]
        init = nn.initializers.xavier_uniform()
        x = nn.Dense(self.mlp_dim, dtype=self.dtype, kernel_init=init,
                     bias_init=nn.initializers.normal(1e-6))(x)
        x = nn.gelu(x)
        return nn.Dense(width, dtype=self.dtype, kernel_init=init,
                        bias_init=nn.initializers.normal(1e-6))(x)


class EncoderBlock(nn.Module):
    """Pre-LN transformer block: x + MHA(LN(x)); x + MLP(LN(x))."""

    mlp_dim: int
    num_heads: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
        y = nn.LayerNorm(dtype=self.dtype, name="ln1")(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, dtype=self.dtype,
            kernel_init=nn.initializers.xavier_uniform(), name="attn")(y, y, mask=mask)
        x = x + y
        y = nn.LayerNorm(dtype=self.dtype, name="ln2")(x)
        return x + MlpBlock(self.mlp_dim, dtype=self.dtype, name="mlp")(y)


# Rematerialisation policies by name (config.model.remat): what the backward pass may keep
# instead of recomputing. True / 'full' keeps nothing but each block's input.
REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def remat_policy(remat: Any):
    """config.model.remat -> None (no remat) or (policy,) ; raises naming the known names."""
    if remat is False or remat is None or remat == "none":
        return None
    if remat is True:
        remat = "full"
    if remat not in REMAT_POLICIES:
        raise ValueError(f"config.model.remat={remat!r}; choose 'none' or one of "
                         f"{sorted(REMAT_POLICIES)}")
    return (REMAT_POLICIES[remat],)


class _ScanBlock(nn.Module):
    """One block with nn.scan's (carry, x) -> (carry, y) signature."""

    mlp_dim: int
    num_heads: int
    remat: Any = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: Optional[jax.Array]) -> tuple:
        policy = remat_policy(self.remat)
        block = nn.remat(EncoderBlock, policy=policy[0]) if policy else EncoderBlock
        x = block(self.mlp_dim, self.num_heads, dtype=self.dtype, name="block")(x, mask)
        return nn.with_logical_constraint(x, ("batch", None, None)), None


class Encoder(nn.Module):
    """`depth` pre-LN blocks and a final LayerNorm, `[B, T, W] -> [B, T, W]`.

    `remat` (False, True or a REMAT_POLICIES name) recomputes each block's activations in the
    backward pass (saves memory, costs up to one more forward pass). `scan` runs the blocks as
    one nn.scan (one compiled block, parameters stacked `[depth, ...]` under `blocks/block`;
    maeclip_jax/scan_params.py converts checkpoints between the two layouts).
    """

    depth: int
    mlp_dim: int
    num_heads: int
    remat: Any = False
    dtype: Dtype = jnp.float32
    scan: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
        if self.scan:
            blocks = nn.scan(_ScanBlock, variable_axes={"params": 0}, split_rngs={"params": True},
                             in_axes=nn.broadcast, length=self.depth)
            x, _ = blocks(self.mlp_dim, self.num_heads, self.remat, self.dtype,
                          name="blocks")(x, mask)
        else:
            policy = remat_policy(self.remat)
            block = nn.remat(EncoderBlock, policy=policy[0]) if policy else EncoderBlock
            for i in range(self.depth):
                x = block(self.mlp_dim, self.num_heads, dtype=self.dtype, name=f"block{i}")(x, mask)
                # Keeps the batch split over the data axes when a mesh and rules are set
                # (sharding.activation_context); a no-op otherwise.
                x = nn.with_logical_constraint(x, ("batch", None, None))
        return nn.LayerNorm(dtype=self.dtype, name="norm")(x)
