"""All four models of the paper train through the same jitted step (on 1 and on 8 devices, with
the same result) and the same loop, with the objectives and evaluators of their configs."""
import jax
import numpy as np
import pytest

import conftest
from maeclip_jax import sharding, train, validation
from maeclip_jax.data import builtin
from maeclip_jax.data.tokenizer import get_tokenizer


def model_config(name: str, **overrides):
    config = conftest.model_config(name, **overrides)
    if name == "maeclip":
        config.loss.text_reconstruction = 0.5  # exercise the optional text loss too
    return config


def _batch(config, tok):
    ex = next(builtin.dataset(0, "train", config.input.image_size).batch(config.batch_size)
              .as_numpy_iterator())
    return {"image": ex["image"], "text": tok.tokenize_numpy([t.decode() for t in ex["text"]])}


SLOW = pytest.mark.slow  # ~20-50 s each on a quiet 2-core CPU (two compiles per model)


# M3AE (the new code path) runs in the quick suite; the others also in `-m slow` / CI.
@pytest.mark.parametrize("name", [pytest.param("mae", marks=SLOW), "m3ae",
                                  pytest.param("clip", marks=SLOW),
                                  pytest.param("maeclip", marks=SLOW)])
def test_one_and_eight_devices_take_the_same_steps(name):
    config = model_config(name)
    validation.validate(config, 8)
    tok = get_tokenizer(config.input.tokenizer, config.input.max_text_len)
    config = train.prepare_config(config, tok)
    batch = _batch(config, tok)
    runs = []
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = sharding.make_mesh({"data": -1}, devices=devices)
        t = train.setup(config, mesh)
        state = t.init(jax.random.PRNGKey(0))
        put = {k: jax.device_put(v, sharding.batch_sharding(mesh)) for k, v in batch.items()}
        losses = []
        for _ in range(3):  # step 0 has lr 0 (warm-up): 3 steps so that every model moves
            state, metrics = t.step(state, put)
            losses.append(float(metrics["loss"]))
        runs.append((losses, jax.device_get(metrics)))
    (l1, m1), (l8, m8) = runs
    assert np.all(np.isfinite(l1)) and l1[0] != l1[-1], l1
    np.testing.assert_allclose(l1, l8, rtol=5e-5)
    for key in m1:
        np.testing.assert_allclose(m1[key], m8[key], rtol=5e-4, atol=1e-6, err_msg=key)
    expected = {"mae": {"loss/reconstruction"}, "m3ae": {"loss/m3ae", "m3ae/text_ce"},
                "clip": {"loss/contrastive"},
                "maeclip": {"loss/contrastive", "loss/reconstruction",
                            "loss/text_reconstruction"}}[name]
    assert expected <= set(m1), sorted(m1)


@SLOW
@pytest.mark.parametrize("name", ["m3ae", "mae"])
def test_the_same_loop_trains_and_evaluates_the_image_only_probed_models(name, tmp_path):
    """MAE and M3AE (no text embedding) through the whole loop: trained, checkpointed,
    probed; zero-shot is absent from their configs and from their results."""
    config = model_config(name, total_steps=2, log_every_steps=1, checkpoint_every_steps=2)
    res = train.train_and_evaluate(config, str(tmp_path))
    assert res["step"] == 2 and 0.0 <= res["linear_probe/top1"] <= 1.0
    assert not any(k.startswith("zero_shot") for k in res)  # no text embedding
