"""Meshes and sharding rules: FSDP / tensor-parallel steps equal the one-device step."""
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from conftest import model_config, tiny_config
from maeclip_jax import models, sharding, train, validation
from maeclip_jax.data import builtin
from maeclip_jax.data.tokenizer import get_tokenizer


def test_rules_give_the_hand_computed_specs():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "model": 2})
    rules = sharding.DEFAULT_RULES
    spec = lambda path, shape, **k: sharding.spec_for(path, shape, mesh, rules, "fsdp", **k)
    # Tensor parallel over `model`, FSDP over `fsdp` on the other dimension.
    assert spec("p/encoder/block0/mlp/Dense_0/kernel", (32, 64), fsdp_min_size=0) == P("fsdp", "model")
    # ... the same rule on Adam's mu for that kernel, and on a scan-stacked kernel.
    assert spec("opt_state/1/0/mu/encoder/block0/mlp/Dense_1/kernel", (64, 32)) == P("model", "fsdp")
    assert spec("encoder/blocks/block/mlp/Dense_1/kernel", (3, 64, 32)) == P(None, "model", "fsdp")
    # A dimension the axis does not divide stays whole.
    assert spec("x/attn/query/kernel", (32, 3, 8)) == P("fsdp", None, None)
    # FSDP: the largest divisible dimension, only above the size threshold.
    assert spec("x/embedding/kernel", (8, 8, 3, 64), fsdp_min_size=0) == P(None, None, None, "fsdp")
    assert spec("x/embedding/kernel", (8, 8, 3, 64), fsdp_min_size=10 ** 6) == P()
    assert spec("x/pos_embedding", (1, 5, 7), fsdp_min_size=0) == P()  # nothing divisible
    assert sharding.spec_for("a/b", (4, 4), mesh, [(r"b$", "replicate"), (".*", "fsdp")],
                             fsdp_min_size=0) == P()


def config_for(name):
    """The tiny config of model `name` with every tensor FSDP-sharded (no size threshold)."""
    c = model_config(name, **{"sharding.fsdp_min_size": 0})
    validation.validate(c, 8)
    return c


def run_two_steps(config, mesh_axes, devices):
    tok = get_tokenizer(config.input.tokenizer, config.input.max_text_len)
    config = train.prepare_config(config, tok)
    mesh = sharding.make_mesh(mesh_axes, devices=devices)
    t = train.setup(config, mesh)
    state = t.init(jax.random.PRNGKey(0))
    ds = builtin.dataset(0, "train", config.input.image_size)
    ex = next(ds.batch(config.batch_size).as_numpy_iterator())
    batch = {"image": ex["image"],
             "text": tok.tokenize_numpy([s.decode() for s in ex["text"]])}
    batch = {k: jax.device_put(v, sharding.batch_sharding(mesh)) for k, v in batch.items()}
    for _ in range(2):
        state, metrics = t.step(state, batch)
    sharded = [path for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]
               if not leaf.sharding.is_fully_replicated]
    return jax.device_get(metrics), jax.device_get(state["params"]), sharded


MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2)]


def check_meshes(name, meshes):
    config = config_for(name)
    m1, p1, _ = run_two_steps(config, {"data": 1}, jax.devices()[:1])
    for shape in meshes:
        axes = dict(zip(("data", "fsdp", "model"), shape))
        m, p, sharded = run_two_steps(config, axes, jax.devices())
        if shape[1] > 1 or shape[2] > 1:  # FSDP / tensor parallel really split the state
            assert sharded, f"mesh {shape}: every state leaf is replicated"
        for k in m1:
            np.testing.assert_allclose(m[k], m1[k], rtol=1e-4, atol=1e-6, err_msg=f"{shape} {k}")
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5,
                                                             err_msg=str(shape)), p, p1)


def test_maeclip_on_a_data_fsdp_model_mesh_steps_like_one_device():
    check_meshes("maeclip", [(2, 2, 2)])


# Every model of the registry (m3ae too, once registered) on every mesh: 4 compiles each.
@pytest.mark.slow
@pytest.mark.parametrize("name", models.names())
def test_meshes_give_the_same_step_as_one_device(name):
    check_meshes(name, MESHES)


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_params_and_close_losses():
    config = config_for("maeclip")
    m32, p32, _ = run_two_steps(config, {"data": 2, "fsdp": 2, "model": 2}, jax.devices())
    config.model.dtype = "bfloat16"
    config.model.remat = "dots"
    m16, p16, _ = run_two_steps(config, {"data": 2, "fsdp": 2, "model": 2}, jax.devices())
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(p16))
    for k in ("loss/contrastive", "loss/reconstruction"):
        np.testing.assert_allclose(m16[k], m32[k], rtol=3e-2, err_msg=k)


@pytest.mark.parametrize("overrides, field", [
    ({"mesh": {"data": -1, "tensor": 2}}, r"config\.mesh: unknown axis 'tensor'"),
    ({"sharding.rules": [("(", "fsdp")]}, r"config\.sharding\.rules\[0\]: bad regex"),
    ({"sharding.rules": [(".*", ("data", "bogus"))]}, r"config\.sharding\.rules\[0\] spec"),
    ({"model.remat": "some"}, r"config\.model\.remat='some'"),
    ({"loss.contrastive_impl": "ring"}, r"config\.loss\.contrastive_impl='ring'"),
])
def test_bad_scale_out_config_names_the_field(overrides, field):
    c = tiny_config()
    for key, value in overrides.items():
        node, *rest = key.split(".")
        if rest:
            c[node][rest[0]] = value
        else:
            c[node] = value
    with pytest.raises(validation.ConfigError, match=field):
        validation.validate(c, 8)
