"""Loss functions: symmetric contrastive (CLIP / InfoNCE), masked-patch reconstruction and
masked-token cross-entropy."""
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


def _ring_shift(x: jax.Array, axes: tuple, n: int) -> jax.Array:
    """Sends x to the next device of the ring over `axes` (n devices)."""
    return jax.lax.ppermute(x, axes, perm=[(i, (i + 1) % n) for i in range(n)])


def _ring_scores(q: jax.Array, k: jax.Array, s: jax.Array, axes: tuple, n: int) -> tuple:
    """Forward ring: every key chunk visits every device once.

    Args:
      q: `[b, D]` local queries; k: `[b, D]` local keys (device d holds keys d*b ... d*b+b-1).

    Returns:
      (lse `[b]`: logsumexp over ALL keys of s * q.k, best `[b]` int32: global index of the
      highest-scoring key). Only a `[b, b]` block of logits exists at any time.
    """
    b = q.shape[0]
    me = jax.lax.axis_index(axes)

    def step(carry, t):
        k_cur, m, l, best_val, best = carry
        logits = s * jnp.einsum("id,jd->ij", q, k_cur)  # keys of device (me - t) mod n
        m_new = jnp.maximum(m, jnp.max(logits, axis=1))
        l = l * jnp.exp(m - m_new) + jnp.sum(jnp.exp(logits - m_new[:, None]), axis=1)
        owner = (me - t) % n
        val, arg = jnp.max(logits, axis=1), jnp.argmax(logits, axis=1) + owner * b
        # Ties go to the lowest global index, as argmax over the whole row does.
        better = (val > best_val) | ((val == best_val) & (arg < best))
        best_val, best = jnp.where(better, val, best_val), jnp.where(better, arg, best)
        return (_ring_shift(k_cur, axes, n), m_new, l, best_val, best), None

    init = (k, jnp.full((b,), -jnp.inf), jnp.zeros((b,)), jnp.full((b,), -jnp.inf),
            jnp.zeros((b,), jnp.int32))
    (_, m, l, _, best), _ = jax.lax.scan(step, init, jnp.arange(n))
    return m + jnp.log(l), best


def _make_ring_lse(axes: tuple, n: int):
    """lse(q, k, s) over all devices' keys, with a custom backward pass that runs the ring
    again (keys travel with their gradient accumulators), so neither pass keeps more than one
    `[b, b]` logits block and one key chunk per device."""

    @jax.custom_vjp
    def ring_lse(q, k, s):
        return _ring_scores(q, k, s, axes, n)

    def fwd(q, k, s):
        lse, best = _ring_scores(q, k, s, axes, n)
        return (lse, best), (q, k, s, lse)

    def bwd(res, cts):
        q, k, s, lse = res
        g = cts[0]  # the int `best` output has no gradient

        def step(carry, _):
            k_cur, dk_cur, dq, ds = carry
            dots = jnp.einsum("id,jd->ij", q, k_cur)
            w = g[:, None] * jnp.exp(s * dots - lse[:, None])  # g_i * softmax_ij
            dq = dq + s * w @ k_cur
            dk_cur = dk_cur + s * w.T @ q
            ds = ds + jnp.sum(w * dots)
            return (_ring_shift(k_cur, axes, n), _ring_shift(dk_cur, axes, n), dq, ds), None

        init = (k, jnp.zeros_like(k), jnp.zeros_like(q), jnp.zeros((), s.dtype))
        (_, dk, dq, ds), _ = jax.lax.scan(step, init, None, length=n)
        return dq, dk, ds  # after n shifts each key's gradient is back on its own device

    ring_lse.defvjp(fwd, bwd)
    return ring_lse


def contrastive_loss_sharded(image_emb: jax.Array, text_emb: jax.Array, scale: jax.Array,
                             mesh, axes: Sequence[str]) -> tuple:
    """The same loss and metrics as `contrastive_loss`, computed with `shard_map` over the
    batch axes: each device computes the loss rows of its own examples, image->text against
    every device's text embeddings and text->image against every device's image embeddings.
    The other tower's embeddings come round a ring (ppermute), one `[b, D]` chunk at a time,
    in the forward and in the (custom) backward pass, so per-device temporary memory is
    `O(b * b + b * D)` at per-device batch b: flat in the number of devices. No device ever
    holds the B x B logits or all B embeddings.

    Args:
      image_emb, text_emb: `[B, D]`, batch split over mesh axes `axes`; row i of each is a pair.
      scale: scalar logit scale.
      mesh: a Mesh (or AbstractMesh) holding `axes`.
    """
    axes = tuple(axes)
    n = 1
    for a in axes:
        n *= mesh.shape[a]
    ring_lse = _make_ring_lse(axes, n)

    def local(img, txt, s):
        img, txt = img.astype(jnp.float32), txt.astype(jnp.float32)
        b = img.shape[0]
        pos = s * jnp.sum(img * txt, axis=1)  # the positive pair sits on the same device
        lse_i2t, best_i2t = ring_lse(img, txt, s)
        lse_t2i, best_t2i = ring_lse(txt, img, s)
        mine = jax.lax.axis_index(axes) * b + jnp.arange(b)
        sums = jnp.stack([jnp.sum(lse_i2t - pos), jnp.sum(lse_t2i - pos),
                          jnp.sum(best_i2t == mine, dtype=jnp.float32),
                          jnp.sum(best_t2i == mine, dtype=jnp.float32)])
        return jax.lax.psum(sums, axes) / (b * n)

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
