"""Loss functions: symmetric contrastive (CLIP / InfoNCE) and masked-patch reconstruction."""
from typing import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from maeclip_jax import masking


def contrastive_loss(image_emb: jax.Array, text_emb: jax.Array, scale: jax.Array) -> tuple:
    """CLIP loss on a global batch.

    Args:
      image_emb, text_emb: `[B, D]` L2-normalised embeddings; row i of each is a matched pair.
      scale: scalar logit scale exp(t).

    Returns:
      (loss, metrics): the mean of image->text and text->image cross-entropies, and a dict with
      both directions' top-1 accuracy within the batch.
    """
    logits = scale * jnp.einsum("id,jd->ij", image_emb.astype(jnp.float32),
                                text_emb.astype(jnp.float32))
    labels = jnp.arange(logits.shape[0])
    logp_i2t = jax.nn.log_softmax(logits, axis=1)
    logp_t2i = jax.nn.log_softmax(logits, axis=0)
    loss_i2t = -jnp.mean(logp_i2t[labels, labels])
    loss_t2i = -jnp.mean(logp_t2i[labels, labels])
    metrics = {
        "contrastive/i2t_top1": jnp.mean(jnp.argmax(logits, axis=1) == labels),
        "contrastive/t2i_top1": jnp.mean(jnp.argmax(logits, axis=0) == labels),
    }
    return 0.5 * (loss_i2t + loss_t2i), metrics


def _rows_vs_gathered(q: jax.Array, k_all: jax.Array, scale: jax.Array, offset: jax.Array,
                      chunk: int) -> tuple:
    """Cross-entropy rows of local queries against ALL keys, one key chunk at a time.

    Args:
      q: `[b, D]` this device's queries; k_all: `[B, D]` every device's keys (gathered);
      offset: global index of q's first row (its positive is k_all[offset + r]).

    Returns:
      (per-row loss `[b]`, per-row top-1 correct `[b]`). Only one `[b, chunk]` block of logits
      exists at a time; the backward pass recomputes it (checkpointed scan body).
    """
    b, big_b = q.shape[0], k_all.shape[0]
    chunks = k_all.reshape(big_b // chunk, chunk, k_all.shape[1])

    @jax.checkpoint
    def body(_, k):
        logits = scale * jnp.einsum("id,jd->ij", q, k)  # [b, chunk]
        return None, (jax.nn.logsumexp(logits, axis=1), jnp.max(logits, axis=1),
                      jnp.argmax(logits, axis=1))

    _, (lse, mx, arg) = jax.lax.scan(body, None, chunks)  # each [n_chunks, b]
    lse = jax.nn.logsumexp(lse, axis=0)
    positive = jax.lax.dynamic_slice_in_dim(k_all, offset, b, axis=0)
    pos_logit = scale * jnp.sum(q * positive, axis=1)
    best_chunk = jnp.argmax(mx, axis=0)
    best = best_chunk * chunk + jnp.take_along_axis(arg, best_chunk[None], 0)[0]
    correct = jax.lax.stop_gradient(best == offset + jnp.arange(b))
    return lse - pos_logit, correct


def contrastive_loss_sharded(image_emb: jax.Array, text_emb: jax.Array, scale: jax.Array,
                             mesh, axes: Sequence[str]) -> tuple:
    """The same loss and metrics as `contrastive_loss`, computed with `shard_map`: each device
    scores its own image rows against the all-gathered text embeddings (image->text) and its own
    text rows against the all-gathered image embeddings (text->image), in chunks of its local
    batch size. No device ever holds the B x B logits: per-device temporary memory is
    `[b, b]` logits plus the gathered `[B, D]` embeddings, at fixed per-device batch b.

    Args:
      image_emb, text_emb: `[B, D]`, batch split over mesh axes `axes`.
      scale: scalar logit scale.
      mesh: a Mesh (or AbstractMesh) holding `axes`.
    """
    axes = tuple(axes)

    def local(img, txt, s):
        img, txt = img.astype(jnp.float32), txt.astype(jnp.float32)
        b = img.shape[0]
        offset = jax.lax.axis_index(axes) * b
        all_img = jax.lax.all_gather(img, axes, tiled=True)
        all_txt = jax.lax.all_gather(txt, axes, tiled=True)
        l_i2t, c_i2t = _rows_vs_gathered(img, all_txt, s, offset, b)
        l_t2i, c_t2i = _rows_vs_gathered(txt, all_img, s, offset, b)
        n = jax.lax.psum(b, axes)
        sums = jax.lax.psum(jnp.stack([l_i2t.sum(), l_t2i.sum(),
                                       c_i2t.sum(dtype=jnp.float32), c_t2i.sum(dtype=jnp.float32)]), axes)
        return sums / n

    sums = jax.shard_map(local, mesh=mesh, in_specs=(P(axes), P(axes), P()), out_specs=P(),
                         check_vma=False)(image_emb, text_emb, scale)
    metrics = {"contrastive/i2t_top1": sums[2], "contrastive/t2i_top1": sums[3]}
    return 0.5 * (sums[0] + sums[1]), metrics


def reconstruction_targets(images: jax.Array, patch_size: int, norm_pix: bool) -> jax.Array:
    """Per-patch pixel targets `[B, N, p*p*3]`; with `norm_pix` each patch is standardised
    (minus its mean, divided by its std), as in MAE."""
    target = masking.patchify(images.astype(jnp.float32), patch_size)
    if norm_pix:
        mean = jnp.mean(target, axis=-1, keepdims=True)
        var = jnp.var(target, axis=-1, keepdims=True)
        target = (target - mean) / jnp.sqrt(var + 1e-6)
    return target


def reconstruction_loss(pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean squared error over MASKED patches only.

    Args:
      pred, target: `[B, N, P]`.
      mask: `[B, N]`, 1 for masked patches (the only ones that count), 0 for visible.
    """
    per_patch = jnp.mean(jnp.square(pred.astype(jnp.float32) - target), axis=-1)
    return jnp.sum(per_patch * mask) / jnp.maximum(jnp.sum(mask), 1.0)
