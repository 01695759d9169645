"""The evaluators end to end on the built-in data with a tiny model: the same results on 1 and
8 devices, padding never reaching a metric, evaluators that a model can't support skipped, and
the eval loop writing results.json, results.md and grounding pictures."""
import json
import os

import jax
import numpy as np
import pytest

from conftest import tiny_config
from maeclip_jax import evaluation, sharding, train
from maeclip_jax.data.tokenizer import get_tokenizer
from maeclip_jax.evaluation import common, report

SMALL_EVALS = {
    "linear_probe": {"num_examples": 96},
    "lp_logistic": {"type": "linear_probe", "protocol": "logistic", "num_examples": 96,
                    "c_grid": [0.1, 1.0]},
    "zero_shot": {"num_examples": 40},
    "retrieval": {"num_images": 21, "captions_per_image": 3, "batch_size": 16},
    "grounding": {"num_images": 11, "batch_size": 16, "num_pictures": 2},
    "vqa": {"num_train_images": 24, "num_test_images": 13, "steps": 3, "batch_size": 8,
            "head": {"width": 32, "depth": 1, "num_heads": 2, "mlp_dim": 64}},
}


def _config(**kw):
    c = tiny_config(**kw)
    c.evals = SMALL_EVALS
    return c


@pytest.fixture(scope="module")
def built():
    config = _config()
    tok = get_tokenizer(config.input.tokenizer, config.input.max_text_len)
    config = train.prepare_config(config, tok)
    mesh8 = sharding.make_mesh(config.mesh)
    t = train.setup(config, mesh8)
    # Host copies: usable with either mesh.
    params = jax.device_get(t.init(jax.random.PRNGKey(0))["params"])
    mesh1 = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
    return config, t.model, tok, params, mesh1, mesh8


@pytest.fixture(scope="module")
def sharded(built):
    """The same parameters laid out as training lays them on a (data 2, fsdp 2, model 2) mesh
    with every tensor FSDP / tensor-parallel split, as evaluation during training sees them."""
    config, _, _, params, _, _ = built
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "model": 2})
    shapes = jax.eval_shape(lambda: params)
    rules = dict(config.sharding.to_dict(), fsdp_min_size=0)
    sh = sharding.state_shardings({"params": shapes}, mesh, rules)["params"]
    placed = jax.device_put(params, sh)
    assert any(not x.sharding.is_fully_replicated for x in jax.tree.leaves(placed))
    return mesh, placed


# Each run compiles its own functions; the costlier evaluators are checked in the slow set.
@pytest.mark.parametrize("name", ["linear_probe", "zero_shot"] + [
    pytest.param(n, marks=pytest.mark.slow) for n in ("lp_logistic", "retrieval", "grounding",
                                                     "vqa")])
def test_evaluator_gives_identical_results_on_1_and_8_devices(built, sharded, name, tmp_path):
    config, model, tok, params, mesh1, mesh8 = built
    res = []
    # 1 device, 8 data-parallel devices, and 8 devices holding FSDP / tensor-parallel params.
    for mesh, p in ((mesh1, params), (mesh8, params), sharded):
        evs = evaluation.build_evaluators(config, model, tok, mesh, str(tmp_path))
        res.append(evs[name].run(p))
    assert res[0] and set(res[0]) == set(res[1]) == set(res[2])
    assert all(k.startswith(name + "/") for k in res[0])
    for r in res[1:]:
        for k in res[0]:
            assert r[k] == pytest.approx(res[0][k], rel=1e-4, abs=1e-5), k
    if name == "grounding":
        assert len(os.listdir(tmp_path / "grounding")) == 2


def test_padding_never_counts(built):
    config, model, tok, params, mesh1, mesh8 = built
    images = common.builtin_eval_split(0, 13, 32)["image"]
    a = common.image_features(model, params, images, config, 8, mesh8)   # 8 + 5 (3 padded)
    b = common.image_features(model, params, images, config, 16, mesh8)  # 13 (3 padded)
    c = common.image_features(model, params, images[:1], config, 8, mesh8)  # 1 (7 padded)
    assert a["embedding"].shape == (13, 32)
    np.testing.assert_allclose(a["embedding"], b["embedding"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(c["embedding"][0], a["embedding"][0], rtol=1e-5, atol=1e-6)
    # 13 images x 2 captions: image->text recall is a multiple of 1/13 and text->image recall of
    # 1/26 whatever the batch size (a padded row that counted would break both).
    cfg = config.copy_and_resolve_references()
    out = []
    for bs in (8, 64):
        cfg.evals = {"retrieval": {"num_images": 13, "captions_per_image": 2, "batch_size": bs}}
        ev = evaluation.build_evaluators(cfg, model, tok, mesh8)["retrieval"]
        out.append(ev.run(params))
    assert out[0] == out[1]
    assert any("i2t" in k for k in out[0]) and any("t2i" in k for k in out[0])
    for k, v in out[0].items():
        n = 13 if "i2t" in k else 26
        assert abs(v * n - round(v * n)) < 1e-9, (k, v)


def test_image_only_model_skips_text_evaluators_and_says_so():
    config = _config(**{"model.name": "mae"})
    tok = get_tokenizer(config.input.tokenizer, config.input.max_text_len)
    config = train.prepare_config(config, tok)
    mesh = sharding.make_mesh(config.mesh)
    model = train.setup(config, mesh).model
    evs = evaluation.build_evaluators(config, model, tok, mesh)
    skipped = evaluation.not_applicable(evs)
    assert set(skipped) == {"zero_shot", "retrieval", "grounding", "vqa"}
    assert "text_embedding" in skipped["zero_shot"] and "'mae'" in skipped["zero_shot"]
    assert "text_tokens" in skipped["vqa"]
    md = report.markdown({"linear_probe/top1": 0.5, "step": 3, "config": "test"},
                         config.evals.to_dict(), skipped)
    assert "| LP top-1 | ZS top-1 |" in md and "| 50.0 | n/a |" in md


@pytest.mark.slow
def test_eval_loop_during_training_and_in_eval_mode(tmp_path, caplog):
    config = _config(total_steps=2, checkpoint_every_steps=2, log_every_steps=1,
                     eval_every_steps=1)
    with caplog.at_level("INFO"):
        res = train.train_and_evaluate(config, str(tmp_path))
    assert caplog.text.count("evaluation at step 1") == 1  # ran during training too
    again = train.train_and_evaluate(config, str(tmp_path), mode="eval")
    assert again == res
    on_disk = json.load(open(tmp_path / "results.json"))
    for key in ("linear_probe/top1", "lp_logistic/top1", "zero_shot/top5", "retrieval/t2i_r@10",
                "grounding/pointing_top5", "grounding/seg_miou", "vqa/top1"):
        assert 0.0 <= on_disk[key] <= 1.0, key
    md = open(tmp_path / "results.md").read()
    assert "| run | step | LP top-1 |" in md and "T→I R@10" in md and "seg mIoU" in md
    assert len([f for f in os.listdir(tmp_path / "grounding") if f.endswith(".png")]) == 2
