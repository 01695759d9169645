"""The pieces the four models add: padding-aware text masking, M3AE's joint pass (no leaks of
masked or padding tokens), the masked-token loss, and the max / attention pooling operators."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from maeclip_jax import losses, masking, models, objectives
from maeclip_jax.models import pooling

# Rows with 9, 3, 1, 0 (all padding) and 12 (no padding) real tokens; ids >= 3 are words.
LENGTHS = (9, 3, 1, 0, 12)


def _tokens(length=12, lengths=LENGTHS, seed=0):
    rng = np.random.default_rng(seed)
    out = np.zeros((len(lengths), length), np.int32)
    for i, n in enumerate(lengths):
        out[i, :n] = rng.integers(3, 50, size=n)
    return jnp.asarray(out)


@pytest.mark.parametrize("ratio", [0.75, 0.5, 0.0])
def test_text_mask_keeps_exact_counts_and_never_touches_padding(ratio):
    tokens = _tokens()
    for seed in range(5):
        m = masking.random_text_mask(jax.random.PRNGKey(seed), tokens, ratio)
        ids_keep, visible = np.asarray(m.ids_keep), np.asarray(m.visible)
        mask, valid = np.asarray(m.mask), np.asarray(m.valid)
        assert ids_keep.shape[1] == masking.num_kept(12, ratio)
        for b, n in enumerate(LENGTHS):
            expect_visible = 0 if n == 0 else masking.num_kept(n, ratio)
            shown = ids_keep[b][visible[b]]
            assert len(shown) == expect_visible
            assert np.all(np.asarray(tokens)[b, shown] != 0)            # never a padding token
            assert len(set(shown.tolist())) == len(shown)
            assert mask[b].sum() == n - expect_visible                   # the rest is masked
            assert np.all(mask[b][~valid[b]] == 0)                       # padding: no target
            # visible and masked partition the real tokens
            both = np.zeros(12, int)
            both[shown] += 1
            both += mask[b].astype(int)
            np.testing.assert_array_equal(both, valid[b].astype(int))


def test_text_masks_differ_between_examples_and_restore_inverts():
    tokens = jnp.full((8, 20), 7, jnp.int32)
    m = masking.random_text_mask(jax.random.PRNGKey(3), tokens, 0.5)
    assert len({np.asarray(r).tobytes() for r in m.mask}) == 8
    perm = np.argsort(np.asarray(m.ids_restore), 1)  # the shuffle
    np.testing.assert_array_equal(perm[:, :m.ids_keep.shape[1]], np.asarray(m.ids_keep))


@pytest.fixture(scope="module")
def m3ae():
    from maeclip_jax.train_step import init_state
    import optax
    config = tiny_config(**{"model.name": "m3ae", "model.text.vocab_size": 50})
    model = models.build(config)
    params = jax.jit(lambda r: init_state(model, optax.sgd(0.0), config, r)["params"])(
        jax.random.PRNGKey(0))
    return config, model, params


def test_m3ae_masked_and_padding_tokens_do_not_leak(m3ae):
    config, model, params = m3ae
    images = jax.random.normal(jax.random.PRNGKey(1), (5, 32, 32, 3))
    tokens = _tokens()
    img_mask = masking.random_mask(jax.random.PRNGKey(2), 5, model.num_patches, 0.75)
    txt_mask = masking.random_text_mask(jax.random.PRNGKey(3), tokens, 0.75)
    run = jax.jit(lambda p, t: model.apply({"params": p}, images, t, img_mask, txt_mask,
                                           method="reconstruct"))
    pixels, logits = run(params, tokens)
    assert pixels.shape == (5, model.num_patches, 8 * 8 * 3) and logits.shape == (5, 12, 50)
    # 1. Changing the ids of MASKED real tokens changes nothing: the encoder never saw them.
    changed = jnp.where(txt_mask.mask > 0, 3 + (tokens + 1) % 40, tokens)
    assert bool(jnp.any(changed != tokens))
    p2, l2 = run(params, changed)
    np.testing.assert_allclose(p2, pixels, atol=1e-5)
    np.testing.assert_allclose(l2, logits, atol=1e-5)
    # 2. Changing the padding embedding changes nothing at any real position.
    p3 = jax.tree.map(lambda x: x, params)
    p3["token_embedding"]["embedding"] = p3["token_embedding"]["embedding"].at[0].set(5.0)
    p3, l3 = run(p3, tokens)
    valid = np.asarray(tokens) != 0
    np.testing.assert_allclose(p3, pixels, atol=1e-5)
    np.testing.assert_allclose(np.asarray(l3)[valid], np.asarray(logits)[valid], atol=1e-5)


def test_m3ae_image_features_use_the_image_alone(m3ae):
    config, model, params = m3ae
    images = jax.random.normal(jax.random.PRNGKey(1), (3, 32, 32, 3))
    out = jax.jit(lambda p: model.apply({"params": p}, images, method="encode_image"))(params)
    assert out["pooled"].shape == (3, 32) and out["tokens"].shape == (3, 16, 32)
    np.testing.assert_allclose(out["pooled"], out["tokens"].mean(1), atol=1e-5)  # gap
    assert not model.has_text  # no text embedding: zero-shot does not apply


def test_masked_token_cross_entropy_hand_checked():
    # Two rows, vocab 3. Row 0: positions 0 and 2 masked; row 1: position 0 masked, 2-3 padding.
    logits = jnp.array([[[2.0, 0.0, 0.0], [9.0, 9.0, 9.0], [0.0, 1.0, 0.0], [5.0, 0.0, 0.0]],
                        [[0.0, 0.0, 3.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    targets = jnp.array([[0, 1, 2, 0], [2, 1, 0, 0]])
    mask = jnp.array([[1.0, 0, 1, 0], [1, 0, 0, 0]])
    # Hand: CE(logits, t) = log(sum(exp(logits))) - logits[t] at the three masked positions.
    ce00 = math.log(math.exp(2) + 2) - 2
    ce02 = math.log(2 + math.e) - 0.0          # target 2 has logit 0
    ce10 = math.log(2 + math.exp(3)) - 3       # target 2 has logit 3
    loss, acc = losses.masked_token_cross_entropy(logits, targets, mask)
    np.testing.assert_allclose(float(loss), (ce00 + ce02 + ce10) / 3, rtol=1e-6)
    np.testing.assert_allclose(float(acc), 2 / 3, rtol=1e-6)  # rows 0/0 and 1/0 right, 0/2 wrong


def test_text_reconstruction_objective_counts_masked_real_tokens_only():
    import optax
    from maeclip_jax.train_step import init_state
    config = tiny_config(**{"loss.text_reconstruction": 1.0, "model.text.vocab_size": 50})
    model = models.build(config)
    params = jax.jit(lambda r: init_state(model, optax.sgd(0.0), config, r)["params"])(
        jax.random.PRNGKey(0))
    tokens = _tokens()
    rng = jax.random.PRNGKey(7)
    loss, _ = jax.jit(lambda p: objectives.get("text_reconstruction")(
        model, {"params": p}, {"text": tokens}, rng, config))(params)
    # Independent recomputation in numpy from the same mask and the model's logits.
    m = masking.random_text_mask(rng, tokens, config.masking.text_ratio)
    logits = np.asarray(jax.jit(lambda p: model.apply({"params": p}, tokens, m,
                                                      method="reconstruct_text"))(params),
                        np.float64)
    tok, msk = np.asarray(tokens), np.asarray(m.mask)
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    nll = lse - np.take_along_axis(logits, tok[..., None], -1)[..., 0]
    picked = [(b, i) for b in range(tok.shape[0]) for i in range(tok.shape[1])
              if tok[b, i] != 0 and msk[b, i] == 1]
    assert len(picked) == sum(n - (masking.num_kept(n, 0.75) if n else 0) for n in LENGTHS)
    expected = np.mean([nll[b, i] for b, i in picked])
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_max_pooling_is_numpy_max_and_its_gradient_reaches_only_argmax_tokens():
    x = np.random.default_rng(0).normal(size=(3, 7, 5)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(pooling.pool_tokens("max", jnp.asarray(x))),
                                  x.max(axis=1))
    w = np.random.default_rng(1).normal(size=(3, 5)).astype(np.float32)
    grad = np.asarray(jax.grad(lambda t: jnp.sum(pooling.pool_tokens("max", t) * w))(
        jnp.asarray(x)))
    expected = np.zeros_like(x)
    am = x.argmax(axis=1)  # [3, 5]
    for b in range(3):
        for c in range(5):
            expected[b, am[b, c], c] = w[b, c]
    np.testing.assert_array_equal(grad, expected)
    # With a validity mask, invalid tokens never win even if larger.
    x2 = x.copy()
    x2[:, -1] = 100.0
    valid = np.ones((3, 7), bool)
    valid[:, -1] = False
    np.testing.assert_array_equal(
        np.asarray(pooling.pool_tokens("max", jnp.asarray(x2), valid=jnp.asarray(valid))),
        x.max(axis=1, where=valid[..., None], initial=-np.inf))


def test_map_pooling_is_permutation_invariant_over_tokens():
    head = pooling.MAPHead(num_heads=2, mlp_dim=16)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 8))
    params = jax.jit(head.init)(jax.random.PRNGKey(1), x)
    apply = jax.jit(head.apply)
    perm = np.random.default_rng(0).permutation(9)
    a = apply(params, x)
    b = apply(params, x[:, perm])
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(a[0], a[1])  # not a constant function
    valid = jnp.arange(9)[None, :] < jnp.array([[5], [9]])
    np.testing.assert_allclose(apply(params, x, valid), apply(params, x[:, perm], valid[:, perm]),
                               rtol=1e-5, atol=1e-6)
