"""nn.scan over blocks computes what the loop computes, and parameters convert both ways."""
import jax
import numpy as np

from conftest import tiny_config
from maeclip_jax import masking, models, scan_params
from maeclip_jax.models import layers


def test_scan_and_loop_encoders_agree_and_params_convert():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 32))
    loop = layers.Encoder(depth=3, mlp_dim=64, num_heads=2)
    scan = layers.Encoder(depth=3, mlp_dim=64, num_heads=2, scan=True, remat="dots")
    p_loop = loop.init(jax.random.PRNGKey(1), x)["params"]
    p_scan = scan_params.loop_to_scan(p_loop)
    # The converted tree has exactly the structure and shapes the scanned module creates.
    ref = jax.eval_shape(scan.init, jax.random.PRNGKey(1), x)["params"]
    assert jax.tree.structure(ref) == jax.tree.structure(p_scan)
    jax.tree.map(lambda a, b: np.testing.assert_equal(a.shape, b.shape), ref, p_scan)
    np.testing.assert_allclose(scan.apply({"params": p_scan}, x), loop.apply({"params": p_loop}, x),
                               rtol=1e-5, atol=1e-6)
    back = scan_params.scan_to_loop(p_scan)
    jax.tree.map(np.testing.assert_array_equal, back, p_loop)


def test_whole_model_state_converts_including_optimizer_moments():
    import optax
    cfg = tiny_config(**{"model.image.depth": 2, "model.text.vocab_size": 100})
    loop_model = models.build(cfg)
    cfg.model.scan_layers = True
    scan_model = models.build(cfg)
    imgs, toks = np.zeros((2, 32, 32, 3), np.float32), np.ones((2, 12), np.int32)
    mask = masking.random_mask(jax.random.PRNGKey(0), 2, loop_model.num_patches, 0.75)
    kwargs = dict(method="encode_image")
    p_loop = loop_model.init(jax.random.PRNGKey(0), imgs, toks, mask)["params"]
    opt = optax.adam(1e-3).init(p_loop)
    state = scan_params.loop_to_scan({"params": p_loop, "opt_state": opt})
    assert "blocks" in state["params"]["image_encoder"]["encoder"]
    assert "blocks" in state["opt_state"][0].mu["image_encoder"]["encoder"]
    out_scan = scan_model.apply({"params": state["params"]}, imgs, **kwargs)["pooled"]
    out_loop = loop_model.apply({"params": p_loop}, imgs, **kwargs)["pooled"]
    np.testing.assert_allclose(out_scan, out_loop, rtol=1e-5, atol=1e-6)
    jax.tree.map(np.testing.assert_array_equal, scan_params.scan_to_loop(state)["params"], p_loop)


import pytest  # noqa: E402

from conftest import model_config  # noqa: E402
from maeclip_jax import objectives  # noqa: E402
from maeclip_jax.train_step import init_state, loss_weights  # noqa: E402


@pytest.mark.parametrize("name", ["clip", "mae", "m3ae", "maeclip", "maeclip+text"])
def test_every_model_and_pass_scans_the_same_parameters(name):
    """With scan_layers every encoder / decoder of every model is scanned (no loop-layout
    leftovers), and each objective's loss equals the loop model's on converted parameters:
    a pass that ignored `scan` would create separate weights or fail to find them."""
    import optax
    cfg = model_config(name.split("+")[0], **{"model.image.depth": 2, "model.text.depth": 2})
    if name.endswith("+text"):
        cfg.loss.text_reconstruction = 0.5
    cfg.model.text.vocab_size = 64
    loop_model = models.build(cfg)
    p_loop = init_state(loop_model, optax.sgd(0.1), cfg, jax.random.PRNGKey(0))["params"]
    cfg.model.scan_layers = True
    scan_model = models.build(cfg)
    ref = jax.eval_shape(lambda r: init_state(scan_model, optax.sgd(0.1), cfg, r)["params"],
                         jax.random.PRNGKey(0))
    p_scan = scan_params.loop_to_scan(p_loop)
    assert jax.tree.structure(ref) == jax.tree.structure(p_scan)
    paths = ["/".join(str(getattr(k, "key", k)) for k in path)
             for path, _ in jax.tree_util.tree_flatten_with_path(ref)[0]]
    assert not [p for p in paths if "/block0/" in p], "a loop-layout encoder under scan_layers"
    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(size=(4, 32, 32, 3)).astype(np.float32),
             "text": np.concatenate([rng.integers(3, 64, (4, 8)), np.zeros((4, 4), int)],
                                    1).astype(np.int32)}
    for obj in loss_weights(cfg):
        fn = objectives.get(obj)
        want, _ = fn(loop_model, {"params": p_loop}, batch, jax.random.PRNGKey(1), cfg)
        got, _ = fn(scan_model, {"params": p_scan}, batch, jax.random.PRNGKey(1), cfg)
        np.testing.assert_allclose(got, want, rtol=2e-5, err_msg=obj)
