import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maeclip_jax import losses


def _normed(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _numpy_clip_loss(img, txt, scale):
    logits = scale * img @ txt.T
    def xent_rows(l):
        l = l - l.max(1, keepdims=True)
        logp = l - np.log(np.exp(l).sum(1, keepdims=True))
        return -np.mean(np.diag(logp))
    return 0.5 * (xent_rows(logits) + xent_rows(logits.T))


def test_contrastive_loss_matches_numpy_formula():
    rng = np.random.default_rng(0)
    img, txt = _normed(rng.normal(size=(6, 5))), _normed(rng.normal(size=(6, 5)))
    loss, metrics = losses.contrastive_loss(jnp.asarray(img), jnp.asarray(txt), jnp.float32(7.0))
    np.testing.assert_allclose(float(loss), _numpy_clip_loss(img, txt, 7.0), rtol=1e-5)
    assert 0.0 <= float(metrics["contrastive/i2t_top1"]) <= 1.0


def test_contrastive_loss_is_lowest_for_matched_pairs():
    rng = np.random.default_rng(1)
    emb = _normed(rng.normal(size=(8, 16)))
    matched, _ = losses.contrastive_loss(jnp.asarray(emb), jnp.asarray(emb), jnp.float32(10.0))
    for seed in range(5):
        perm = np.random.default_rng(seed).permutation(8)
        if (perm == np.arange(8)).all():
            continue
        shuffled, _ = losses.contrastive_loss(jnp.asarray(emb), jnp.asarray(emb[perm]),
                                              jnp.float32(10.0))
        assert float(matched) < float(shuffled)


def test_reconstruction_loss_counts_masked_patches_only():
    pred = jnp.zeros((1, 4, 2))
    target = jnp.array([[[1.0, 1.0], [2.0, 2.0], [100.0, 100.0], [3.0, 3.0]]])
    mask = jnp.array([[1.0, 1.0, 0.0, 1.0]])  # patch 2 is visible: its huge error must not count
    loss = losses.reconstruction_loss(pred, target, mask)
    np.testing.assert_allclose(float(loss), (1 + 4 + 9) / 3, rtol=1e-6)


def test_norm_pix_targets_are_standardised_per_patch():
    img = jax.random.uniform(jax.random.PRNGKey(0), (2, 8, 8, 3)) * 5 + 3
    t = np.asarray(losses.reconstruction_targets(img, 4, norm_pix=True))
    np.testing.assert_allclose(t.mean(-1), 0, atol=1e-5)
    np.testing.assert_allclose(t.std(-1), 1, atol=1e-3)


@pytest.mark.parametrize("mesh_axes", [{"data": 8}, {"data": 2, "fsdp": 2, "model": 2}])
def test_sharded_contrastive_loss_equals_global_in_value_and_gradients(mesh_axes):
    import jax
    import jax.numpy as jnp
    from maeclip_jax import losses, sharding
    mesh = sharding.make_mesh(mesh_axes)
    k1, k2 = jax.random.split(jax.random.PRNGKey(1))
    unit = lambda x: x / jnp.linalg.norm(x, axis=1, keepdims=True)
    img, txt = unit(jax.random.normal(k1, (16, 8))), unit(jax.random.normal(k2, (16, 8)))
    txt = txt.at[:5].set(img[:5])  # some rows right, so top-1 is not trivially 0
    scale = jnp.float32(7.0)
    axes = sharding.batch_axes(mesh)

    def value_and_grads(fn):
        f = lambda i, t, s: fn(i, t, s)[0]
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))(img, txt, scale)

    ref = value_and_grads(losses.contrastive_loss)
    new = value_and_grads(lambda i, t, s: losses.contrastive_loss_sharded(i, t, s, mesh, axes))
    np.testing.assert_allclose(new[0], ref[0], rtol=1e-6)
    for a, b in zip(new[1], ref[1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    m_ref = losses.contrastive_loss(img, txt, scale)[1]
    m_new = jax.jit(lambda i, t: losses.contrastive_loss_sharded(i, t, scale, mesh, axes)[1])(img, txt)
    for k in m_ref:
        assert float(m_new[k]) == float(m_ref[k]) and float(m_ref[k]) >= 5 / 16, k
