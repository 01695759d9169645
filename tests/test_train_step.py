"""The jitted train step: learning, device-count invariance, config checks, checkpoints."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from maeclip_jax import checkpoint, sharding, train, validation
from maeclip_jax.data import builtin
from maeclip_jax.data.tokenizer import get_tokenizer


def _setup(config, devices):
    tok = get_tokenizer(config.input.tokenizer, config.input.max_text_len)
    config = train.prepare_config(config, tok)
    mesh = sharding.make_mesh({"data": -1}, devices=devices)
    return train.setup(config, mesh), tok, mesh


def _batch(config, tok, offset=0):
    ds = builtin.dataset(0, "train", config.input.image_size, start=offset)
    ex = next(ds.batch(config.batch_size).as_numpy_iterator())
    return {"image": ex["image"], "text": tok.tokenize_numpy([t.decode() for t in ex["text"]])}


def _put(batch, mesh):
    return {k: jax.device_put(v, sharding.batch_sharding(mesh)) for k, v in batch.items()}


@pytest.mark.parametrize("model_name", ["maeclip", "clip", "mae"])
def test_loss_falls_on_a_fixed_batch(model_name):
    config = tiny_config(**{"model.name": model_name, "optimizer.lr": 3e-3,
                            "optimizer.warmup_steps": 0, "total_steps": 30})
    if model_name == "clip":
        config.loss.reconstruction = 0.0
    if model_name == "mae":
        config.loss.contrastive = 0.0
    t, tok, mesh = _setup(config, jax.devices()[:1])
    state = t.init(jax.random.PRNGKey(0))
    batch = _put(_batch(config, tok), mesh)
    losses = []
    for _ in range(25):
        state, metrics = t.step(state, batch)
        losses.append(float(metrics["loss"]))
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.85 * np.mean(losses[:3]), losses


# In `-m slow` / CI: the quick suite covers it with MAE-CLIP on a (2, 2, 2) mesh
# (test_sharding.py) and M3AE on 8 data devices (test_four_models_train.py).
@pytest.mark.slow
def test_eight_devices_give_the_same_step_as_one():
    config = tiny_config()
    assert jax.device_count() == 8
    outs = []
    for devices in (jax.devices()[:1], jax.devices()):
        t, tok, mesh = _setup(config, devices)
        state = t.init(jax.random.PRNGKey(0))
        batch = _put(_batch(config, tok), mesh)
        for _ in range(2):
            state, metrics = t.step(state, batch)
        outs.append((jax.device_get(metrics), jax.device_get(state["params"])))
    (m1, p1), (m8, p8) = outs
    for k in ("loss", "loss/contrastive", "loss/reconstruction", "grad_norm"):
        np.testing.assert_allclose(m1[k], m8[k], rtol=2e-5, err_msg=k)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), p1, p8)


def test_the_step_flips_exactly_the_examples_the_batch_marks():
    """A step on a batch with flip marks equals a step on the same images flipped by numpy
    (and unmarked ones untouched), on 8 devices."""
    config = tiny_config()
    t, tok, mesh = _setup(config, jax.devices())
    batch = _batch(config, tok)
    marks = np.arange(config.batch_size) % 3 == 0
    by_numpy = dict(batch, image=np.where(marks[:, None, None, None],
                                          batch["image"][:, :, ::-1], batch["image"]))
    outs = []
    for b in (dict(batch, flip=marks), dict(by_numpy, flip=np.zeros_like(marks))):
        state = t.init(jax.random.PRNGKey(0))
        for _ in range(2):
            state, metrics = t.step(state, _put(b, mesh))
        outs.append(float(metrics["loss"]))
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-6)
    state = t.init(jax.random.PRNGKey(0))
    _, m = t.step(state, _put(dict(batch, flip=np.zeros_like(marks)), mesh))
    state = t.init(jax.random.PRNGKey(0))
    _, m_flip = t.step(state, _put(dict(batch, flip=marks), mesh))
    assert float(m["loss"]) != float(m_flip["loss"])  # the marks do change what is trained on


def test_masks_differ_between_steps_but_replay_for_the_same_step():
    config = tiny_config(**{"loss.contrastive": 0.0, "optimizer.lr": 1e-12})
    t, tok, mesh = _setup(config, jax.devices()[:1])
    batch = _put(_batch(config, tok), mesh)
    s0 = t.init(jax.random.PRNGKey(0))
    _, m_a = t.step(s0, batch)
    s0 = t.init(jax.random.PRNGKey(0))
    s1, m_b = t.step(s0, batch)
    _, m_c = t.step(s1, batch)  # step 1 draws another mask -> another loss (params ~unchanged)
    assert float(m_a["loss"]) == float(m_b["loss"])
    assert float(m_c["loss"]) != float(m_b["loss"])


def test_weight_decay_only_on_kernels():
    from maeclip_jax import optim
    config = tiny_config()
    t, _, _ = _setup(config, jax.devices()[:1])
    mask = optim.weight_decay_mask(t.state_shapes["params"])
    flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(mask)}
    assert all(v for k, v in flat.items() if k.endswith("['kernel']"))
    for k, v in flat.items():
        leaf = k.rsplit("[", 1)[-1].strip("[]'")
        if leaf in ("bias", "scale", "embedding", "pos_embedding", "logit_scale", "mask_token",
                    "cls"):
            assert not v, k
    assert flat["['logit_scale']"] is False
    assert flat["['text_encoder']['token_embedding']['embedding']"] is False


@pytest.mark.parametrize("overrides, field", [
    ({"model.image.variant": "test/7"}, "config.model.image.variant"),
    ({"batch_size": 12}, "config.batch_size"),
    ({"model.image.pooling": "mean"}, "config.model.image.pooling"),
    ({"masking.ratio": 1.0}, "config.masking.ratio"),
    ({"model.name": "clip"}, "config.loss.reconstruction"),
    ({"input.source": "nope"}, "config.input.source"),
])
def test_bad_config_fails_before_compilation_naming_the_field(overrides, field, monkeypatch):
    def no_compile(*a, **k):
        raise AssertionError("compiled before the config was checked")
    monkeypatch.setattr(train, "setup", no_compile)
    config = tiny_config(**overrides)
    with pytest.raises(validation.ConfigError, match=field.replace(".", r"\.")):
        train.train_and_evaluate(config, "/tmp/never_written")


def test_laion_config_without_data_says_what_is_missing():
    from conftest import REPO
    import importlib.util, os
    spec = importlib.util.spec_from_file_location("c", os.path.join(REPO, "configs/maeclip_laion.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    # Everything the user must supply is named at once, not one field per attempt.
    with pytest.raises(validation.ConfigError, match=r"2 fields need values:\n- config\.input"
                                                     r"\.data is empty.*\n- config\.input\."
                                                     r"tokenizer_model is empty"):
        validation.validate(mod.get_config(), 8)


def test_checkpoint_round_trip(tmp_path):
    config = tiny_config()
    t, tok, mesh = _setup(config, jax.devices())
    state = t.init(jax.random.PRNGKey(0))
    state, _ = t.step(state, _put(_batch(config, tok), mesh))
    ckpt = checkpoint.Checkpointer(str(tmp_path), every_steps=1, keep=2)
    ckpt.maybe_save(1, state, {"step": 1, "examples_per_process": 16})
    ckpt.wait()
    restored, meta = checkpoint.Checkpointer(str(tmp_path), 1, 2).restore(
        checkpoint.abstract_with_shardings(t.state_shapes, t.state_sharding))
    assert meta["step"] == 1 and meta["examples_per_process"] == 16
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 state, restored)
    leaf = jax.tree.leaves(restored["params"])[0]
    assert leaf.sharding == jax.tree.leaves(t.state_sharding["params"])[0]


def test_schedule_warms_up_then_follows_the_cosine_and_says_when_warmup_eats_the_run(caplog):
    import math

    import ml_collections

    from maeclip_jax import optim
    cfg = ml_collections.ConfigDict(dict(lr=1e-3, warmup_steps=10, min_lr_ratio=0.1))
    sched = optim.learning_rate_schedule(cfg, 100)
    for step in (0, 5, 10, 40, 100):
        if step <= 10:
            want = 1e-3 * step / 10
        else:  # cosine from the peak down to lr * min_lr_ratio, over the steps after warm-up
            frac = (step - 10) / 90
            want = 1e-4 + (1e-3 - 1e-4) * 0.5 * (1 + math.cos(math.pi * frac))
        np.testing.assert_allclose(float(sched(step)), want, rtol=1e-5, atol=1e-9, err_msg=step)
    assert "warm-up is cut" not in caplog.text
    cfg.warmup_steps = 160
    with caplog.at_level("WARNING"):
        sched = optim.learning_rate_schedule(cfg, 100)
    assert "warmup_steps=160 is not below total_steps=100: the warm-up is cut to 99" in caplog.text
    np.testing.assert_allclose(float(sched(99)), 1e-3, rtol=1e-6)
