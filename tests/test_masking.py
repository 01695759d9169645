import jax
import jax.numpy as jnp
import numpy as np

from maeclip_jax import masking


def test_each_example_keeps_exactly_k_patches():
    m = masking.random_mask(jax.random.PRNGKey(0), 16, 49, 0.75)
    k = masking.num_kept(49, 0.75)
    assert k == 12
    assert m.ids_keep.shape == (16, k)
    np.testing.assert_array_equal(np.asarray(m.mask).sum(1), 49 - k)
    for b in range(16):  # kept indices are distinct and exactly the unmasked positions
        kept = np.asarray(m.ids_keep[b])
        assert len(set(kept.tolist())) == k
        np.testing.assert_array_equal(np.sort(kept), np.flatnonzero(np.asarray(m.mask[b]) == 0))


def test_examples_get_different_masks():
    m = np.asarray(masking.random_mask(jax.random.PRNGKey(1), 8, 64, 0.75).mask)
    assert len({row.tobytes() for row in m}) == 8


def test_restore_inverts_the_shuffle():
    n, b = 20, 4
    m = masking.random_mask(jax.random.PRNGKey(2), b, n, 0.5)
    x = jnp.broadcast_to(jnp.arange(n)[None, :, None] * 10.0, (b, n, 3))
    # Shuffle as the decoder sees it: kept tokens first, then the masked ones.
    ids_shuffle = np.argsort(np.asarray(m.ids_restore), axis=1)
    shuffled = jnp.take_along_axis(x, jnp.asarray(ids_shuffle)[..., None], axis=1)
    np.testing.assert_array_equal(np.asarray(shuffled[:, : m.ids_keep.shape[1], 0]),
                                  np.asarray(m.ids_keep) * 10.0)
    restored = jnp.take_along_axis(shuffled, m.ids_restore[..., None], axis=1)
    np.testing.assert_array_equal(np.asarray(restored), np.asarray(x))


def test_decoder_input_puts_each_kept_token_back_where_it_came_from():
    """What the MAE decoder gets (fill_masked: kept tokens + mask tokens, unshuffled) checked
    against numpy indexing: kept position ids_keep[b, j] holds x[b, ids_keep[b, j]], every
    position the mask marks holds the mask token."""
    from maeclip_jax.models.mae_decoder import fill_masked
    n, b, w = 16, 3, 2
    m = masking.random_mask(jax.random.PRNGKey(3), b, n, 0.75)
    x = np.arange(b * n * w, dtype=np.float32).reshape(b, n, w) + 1.0
    keep = np.asarray(m.ids_keep)
    kept = np.stack([x[i, keep[i]] for i in range(b)])
    token = np.full((1, 1, w), -7.0, np.float32)
    out = np.asarray(fill_masked(jnp.asarray(kept), m.ids_restore, jnp.asarray(token)))
    want = np.where(np.asarray(m.mask)[..., None] == 1, -7.0, x)
    np.testing.assert_array_equal(out, want)


def test_patchify_matches_a_direct_loop_and_inverts():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(2, 12, 8, 3)).astype(np.float32)
    p = 4
    patches = np.asarray(masking.patchify(jnp.asarray(img), p))
    assert patches.shape == (2, 6, 48)
    expected = np.stack([img[:, r * p:(r + 1) * p, c * p:(c + 1) * p].reshape(2, -1)
                         for r in range(3) for c in range(2)], axis=1)
    np.testing.assert_array_equal(patches, expected)
    back = masking.unpatchify(jnp.asarray(patches), p, (3, 2))
    np.testing.assert_array_equal(np.asarray(back), img)


def test_take_tokens_formulations_match_numpy_indexing():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 10, 5)).astype(np.float32)
    ids = np.stack([rng.permutation(10)[:4] for _ in range(3)]).astype(np.int32)
    want = np.stack([x[b, ids[b]] for b in range(3)])  # independent reference
    for impl in ("gather", "onehot"):
        np.testing.assert_allclose(np.asarray(masking.take_tokens(jnp.asarray(x), jnp.asarray(ids),
                                                                  impl)), want, rtol=1e-6,
                                   err_msg=impl)
    shared = np.broadcast_to(ids[:1], ids.shape)
    np.testing.assert_array_equal(np.asarray(masking.take_tokens(x, shared, "shared")),
                                  np.stack([x[b, ids[0]] for b in range(3)]))


def test_shared_reference_mask_is_one_mask_for_the_batch(monkeypatch):
    monkeypatch.setattr(masking, "TAKE_IMPL", "shared")
    m = np.asarray(masking.random_mask(jax.random.PRNGKey(1), 8, 64, 0.75).mask)
    assert len({row.tobytes() for row in m}) == 1 and m.sum() == 8 * 48
