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
