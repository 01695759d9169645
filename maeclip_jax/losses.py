"""Loss functions: symmetric contrastive (CLIP / InfoNCE), masked-patch reconstruction and
masked-token cross-entropy."""
import jax
import jax.numpy as jnp

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


def masked_token_cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> tuple:
    """Cross-entropy averaged over the tokens where `mask` is 1 (masked, non-padding tokens).

    Args:
      logits: `[B, L, V]`; targets: `[B, L]` int ids; mask: `[B, L]` {0, 1}.

    Returns:
      (loss, accuracy): mean CE and top-1 accuracy over the counted tokens (0 if none).
    """
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    count = jnp.maximum(jnp.sum(mask), 1.0)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    counted = mask > 0  # `where`, not a product: an unmasked position never reaches the sum
    return (jnp.sum(jnp.where(counted, nll, 0.0)) / count,
            jnp.sum(jnp.where(counted, correct, 0.0)) / count)
