"""The evaluators end to end with a tiny model: on the built-in data the same results on 1 and
8 devices, padding never reaching a metric, evaluators that a model can't support skipped, and
the eval loop writing results.json, results.md and grounding pictures; linear probe and
zero-shot on TFDS datasets (tfds.testing.mock_data) and retrieval on img2dataset shards, against
independent computations."""
import json
import os

import jax
import numpy as np
import pytest

from conftest import tiny_config
from maeclip_jax import evaluation, sharding, train
from maeclip_jax.data.tokenizer import get_tokenizer
from maeclip_jax.evaluation import common, linear_probe, report

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
    md = report.markdown({"linear_probe/top1": 0.5, "step": 3, "config": "test"},
                         {"linear_probe": {}}, {})
    assert "(LP = linear probe)." in md and "ZS" not in md


def test_small_hyperparameters_keep_their_digits_in_the_tables():
    # A ridge l2 of 1e-6 printed with 4 decimals read as 0, i.e. as an unregularised probe.
    results = {"linear_probe/l2": 1e-6, "linear_probe/top1": 0.63478, "step": 3, "config": "t"}
    md = report.markdown(results, {"linear_probe": {}}, {})
    assert "| linear_probe/l2 | 1e-06 |" in md and "| linear_probe/top1 | 0.6348 |" in md
    table = train.format_table(results)
    assert "1e-06" in table and "0.6348" in table and "0.0000" not in table


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
    assert not [k for k, v in on_disk.items() if isinstance(v, dict)]  # flat metric -> value
    for key in ("linear_probe/top1", "lp_logistic/top1", "zero_shot/top5", "retrieval/t2i_r@10",
                "grounding/pointing_top5", "grounding/seg_miou", "vqa/top1"):
        assert 0.0 <= on_disk[key] <= 1.0, key
    md = open(tmp_path / "results.md").read()
    assert "| run | step | LP top-1 |" in md and "T→I R@10" in md and "seg mIoU" in md
    assert len([f for f in os.listdir(tmp_path / "grounding") if f.endswith(".png")]) == 2


# --- TFDS (tfds.testing.mock_data: nothing is downloaded) and img2dataset shards ---

# Names for cifar10's 10 classes in the tiny tokenizer's vocabulary (its real names, "airplane",
# ..., would all be the unknown token: an untrained model would give every class one embedding).
CIFAR10 = ("red circle", "red square", "green triangle", "green cross", "blue circle",
           "blue square", "yellow triangle", "yellow cross", "purple circle", "cyan square")


def _evals_config(config, evals):
    cfg = config.copy_and_resolve_references()
    cfg.evals = evals
    return cfg


def _tfds_numpy(name, split, n, size):
    """Images (centre-cropped) and labels read straight from TFDS, without the evaluators."""
    import tensorflow_datasets as tfds
    ds = tfds.load(name, split=split, download=False, shuffle_files=False).take(n)
    ex = list(ds.as_numpy_iterator())
    return (np.stack([common.resize_center_crop(e["image"], size).numpy() for e in ex]),
            np.array([e["label"] for e in ex]))


def test_linear_probe_and_zero_shot_on_tfds_datasets(built, tmp_path):
    import tensorflow_datasets as tfds
    config, model, tok, params, mesh1, mesh8 = built
    (tmp_path / "inet.txt").write_text("\n".join(f"class number {i}" for i in range(1000)))
    tf_fields = {"dataset": "tfds:cifar10", "train_split": "train", "test_split": "test",
                 "num_train_examples": 30, "num_test_examples": 20, "batch_size": 8}
    cfg = _evals_config(config, {
        "lp": dict(tf_fields, type="linear_probe"),
        "lp_log": dict(tf_fields, type="linear_probe", protocol="logistic", c_grid=[0.1, 1.0]),
        "zs": {"type": "zero_shot", "dataset": "tfds:cifar10", "class_names": CIFAR10,
               "num_test_examples": 20, "batch_size": 8, "data_dir": "", "test_split": ""},
        "zs_inet": {"type": "zero_shot", "dataset": "tfds:imagenet2012",
                    "test_split": "validation", "classes_file": str(tmp_path / "inet.txt"),
                    "templates": ["a photo of a {}"], "num_test_examples": 6,
                    "batch_size": 256}})
    with tfds.testing.mock_data(num_examples=40):
        evs = evaluation.build_evaluators(cfg, model, tok, mesh8)
        r = {k: v for ev in evs.values() for k, v in ev.run(params).items()}
        # The TFDS reading is the same on 1 device (one evaluator suffices to show it).
        one = evaluation.build_evaluators(cfg, model, tok, mesh1)["lp"].run(params)
        fit_x, fit_y = _tfds_numpy("cifar10", "train", 30, 32)
        test_x, test_y = _tfds_numpy("cifar10", "test", 20, 32)
    assert one == pytest.approx({k: r[k] for k in one}, rel=1e-5, abs=1e-6)
    for key in ("lp/top1", "lp_log/top1", "zs/top1", "zs/top5", "zs_inet/top1", "zs_inet/top5"):
        assert 0.0 <= r[key] <= 1.0, key
    for key in ("lp/top1", "lp_log/top1", "zs/top1", "zs/top5"):  # multiples of 1/20
        assert abs(r[key] * 20 - round(r[key] * 20)) < 1e-9, key
    assert r["zs/top1"] <= r["zs/top5"] and r["zs_inet/top1"] <= r["zs_inet/top5"]
    # The probe from features computed here, from TFDS read here: the same top-1.
    f = lambda x: common.image_features(model, params, x, config, 16, mesh1)  # noqa: E731
    ref = linear_probe.ridge_probe(f(fit_x)["pooled"], fit_y, f(test_x)["pooled"], test_y, 10)
    assert r["lp/top1"] == pytest.approx(ref["top1"]) and r["lp/l2"] == ref["l2"]
    # Zero-shot by hand: class embedding = mean of the template embeddings, re-normalised.
    prompts = [t.format(c) for c in CIFAR10 for t in
               ("a {}", "a photo of a {}", "an image of a {}", "there is a {}", "a small {}",
                "a large {}")]
    txt = common.text_embeddings(model, params, tok.tokenize_numpy(prompts), 64, mesh1)
    cls = txt.reshape(10, 6, -1).mean(1)
    cls /= np.linalg.norm(cls, axis=1, keepdims=True)
    pred = np.argmax(f(test_x)["embedding"] @ cls.T, 1)
    assert r["zs/top1"] == pytest.approx(np.mean(pred == test_y))


def test_tfds_evaluator_errors_name_the_config_field(built, tmp_path):
    import tensorflow_datasets as tfds
    config, model, tok, params, mesh1, _ = built

    def build(**ev):
        return evaluation.build_evaluators(_evals_config(config, {"e": ev}), model, tok, mesh1)
    # Not prepared in data_dir: fails when the evaluators are built (before any training).
    with pytest.raises(FileNotFoundError, match=r"config.evals.e.dataset='tfds:cifar10'.*"
                                                r"train_split='train'.*data_dir="):
        build(type="linear_probe", dataset="tfds:cifar10", data_dir=str(tmp_path))
    with tfds.testing.mock_data(num_examples=4):
        with pytest.raises(ValueError, match=r"config.evals.e.*WordNet id.*classes_file"):
            build(type="zero_shot", dataset="tfds:imagenet2012", test_split="validation")
        with pytest.raises(ValueError, match=r"config.evals.e: 2 class names given, TFDS "
                                             r"'cifar10' has 10 classes"):
            build(type="zero_shot", dataset="tfds:cifar10", class_names=["a", "b"])
        with pytest.raises(ValueError, match=r"config.evals.e.dataset='img2dataset:x'"):
            build(type="linear_probe", dataset="img2dataset:x")
        # Every evaluator that cannot start is named at once, not one per attempt.
        with pytest.raises(ValueError, match=r"(?s)2 evaluators cannot start:\n- config\.evals"
                                             r"\.a\.dataset='img2dataset:x'.*\n- config\.evals\.b: "
                                             r"2 class names given"):
            evaluation.build_evaluators(_evals_config(config, {
                "a": {"type": "linear_probe", "dataset": "img2dataset:x"},
                "b": {"type": "zero_shot", "dataset": "tfds:cifar10", "class_names": ["a", "b"]}}),
                model, tok, mesh1)


@pytest.mark.parametrize("fmt", ["tar", "tfrecord"])
def test_retrieval_on_img2dataset_shards_with_several_captions_per_image(built, tmp_path, fmt):
    import shard_writers
    config, model, tok, params, mesh1, mesh8 = built
    ext = "tar" if fmt == "tar" else "tfrecord"
    write = shard_writers.write_tar if fmt == "tar" else shard_writers.write_tfrecord
    # 7 images with 1-4 caption lines each (some blank lines), over 2 shards, one broken record.
    from maeclip_jax.data import builtin
    caps = [[f"a {builtin.COLOUR_NAMES[(i + j) % 6]} {builtin.SHAPES[(i + 3 * j) % 4]} on the "
             f"{('left', 'right')[j % 2]}" for j in range(1 + i % 4)] for i in range(7)]
    texts = ["\n".join(c) + ("\n\n" if i % 2 else "") for i, c in enumerate(caps)]
    write(str(tmp_path / f"a.{ext}"), range(4), image_size=40, captions=texts[:4],
          broken=("truncated_jpeg",))
    write(str(tmp_path / f"b.{ext}"), range(4, 7), image_size=40, captions=texts[4:])
    cfg = _evals_config(config, {"ret": {"type": "retrieval", "batch_size": 8,
                                         "dataset": f"img2dataset:{tmp_path}/*.{ext}"}})
    out = [evaluation.build_evaluators(cfg, model, tok, m)["ret"].run(params)
           for m in (mesh1, mesh8)]
    assert out[0] == out[1]
    # By hand: embeddings of the written images / caption lines, ranks counted with loops.
    imgs = np.stack([common.resize_center_crop(
        tf_decode(shard_writers.example(i, 40)[0]), 32).numpy() for i in range(7)])
    flat = [c for cs in caps for c in cs]
    owner = [i for i, cs in enumerate(caps) for _ in cs]
    ie = common.image_features(model, params, imgs, config, 8, mesh1)["embedding"]
    te = common.text_embeddings(model, params, tok.tokenize_numpy(flat), 8, mesh1)
    sim = ie @ te.T
    want = {}
    for k in (1, 5, 10):
        i2t = [sum(1 for t in range(len(flat)) if owner[t] != i and
                   sim[i, t] >= max(sim[i, u] for u in range(len(flat)) if owner[u] == i)) < k
               for i in range(7)]
        t2i = [sum(1 for i in range(7) if i != owner[t] and sim[i, t] >= sim[owner[t], t]) < k
               for t in range(len(flat))]
        want[f"ret/i2t_r@{k}"], want[f"ret/t2i_r@{k}"] = np.mean(i2t), np.mean(t2i)
    assert out[0] == pytest.approx(want, abs=1e-9)
    assert out[0]["ret/t2i_r@10"] == 1.0  # 7 images < 10


def tf_decode(jpg):
    import tensorflow as tf
    return tf.io.decode_jpeg(jpg, channels=3)
