"""Every config file loads, validates and builds its model abstractly (jax.eval_shape) with the
parameter count a direct formula gives; the :tiny variants validate fully and are small."""
import glob
import importlib.util
import os

import jax
import numpy as np
import pytest

from conftest import REPO
from maeclip_jax import models, optim, validation
from maeclip_jax.train_step import init_state

PAPER_FILES = sorted(glob.glob(os.path.join(REPO, "configs", "*_cc12m.py")) +
                     glob.glob(os.path.join(REPO, "configs", "*_laion.py")))
CLIP_BPE_VOCAB = 49_408


def load(path, arg=None):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.__doc__ and "python -m maeclip_jax.main --config=configs/" in mod.__doc__, path
    return mod.get_config(arg)


def block(w, mlp):
    """Parameters of one pre-LN transformer block (attention and MLP with biases, 2 LNs)."""
    return (4 * w * w + 4 * w) + (2 * w * mlp + mlp + w) + 4 * w


def vit(w, depth, mlp, patch):
    return patch * patch * 3 * w + w + depth * block(w, mlp) + 2 * w


def param_counts(config):
    """{top-level module: count} of the model's parameters, built abstractly."""
    model = models.build(config)
    tx, _ = optim.make_optimizer(config.optimizer, config.total_steps)
    shapes = jax.eval_shape(lambda r: init_state(model, tx, config, r)["params"],
                            jax.random.PRNGKey(0))
    return {k: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(v)) for k, v in shapes.items()}


def test_there_is_a_config_for_every_model_and_regime():
    names = {os.path.basename(p)[:-3] for p in PAPER_FILES}
    assert names == {f"{m}_{r}" for m in ("mae", "m3ae", "clip", "maeclip")
                     for r in ("cc12m", "laion")}


@pytest.mark.parametrize("path", PAPER_FILES, ids=lambda p: os.path.basename(p)[:-3])
def test_paper_config_validates_and_has_the_expected_parameter_count(path, tmp_path):
    config = load(path)
    name = config.model.name
    assert config.input.image_size == 224 and config.model.image.variant == "B/16"
    assert config.input.source == "img2dataset"
    with pytest.raises(validation.ConfigError, match=r"config\.input\.data"):
        validation.validate(config, 8)  # no data given: says which field is missing
    for i in range(3):  # validation checks that the pattern matches files; it reads none
        (tmp_path / f"{i:05d}.tar").touch()
    config.input.data = str(tmp_path / "{00000..00002}.tar")
    with pytest.raises(validation.ConfigError, match=r"config\.input\.tokenizer_model"):
        validation.validate(config, 8)  # a sentencepiece model is needed too, and named
    (tmp_path / "sp.model").touch()
    config.input.tokenizer_model = str(tmp_path / "sp.model")
    validation.validate(config, 8)
    config.model.text.vocab_size = CLIP_BPE_VOCAB  # what a CLIP BPE tokenizer fills in

    counts = param_counts(config)
    w, d, mlp = 768, 12, 3072
    image = vit(w, d, mlp, 16)
    assert 85.5e6 < image < 86.5e6  # ViT-B/16: "86M" (Dosovitskiy et al.)
    decoder = (w * 512 + 512) + 512 + 8 * block(512, 2048) + 2 * 512 + (512 * 768 + 768)
    text = CLIP_BPE_VOCAB * 512 + 77 * 512 + 12 * block(512, 2048) + 2 * 512
    if name in ("clip", "maeclip"):
        assert counts["image_encoder"] == image
        assert counts["text_encoder"] == text
        assert counts["image_projection"] == 768 * 512 and counts["text_projection"] == 512 * 512
    if name == "clip":
        assert set(counts) == {"image_encoder", "text_encoder", "image_projection",
                               "text_projection", "logit_scale"}
        # CLIP ViT-B/16 has about 149.6M parameters (Radford et al.; open_clip ViT-B-16).
        assert abs(sum(counts.values()) - 149.6e6) < 0.01 * 149.6e6
    if name == "maeclip":
        assert counts["image_decoder"] == decoder
        assert "text_reconstruction_decoder" not in counts  # off by default
    if name == "mae":  # no text tower, no contrastive parameters
        assert set(counts) == {"image_encoder", "image_decoder"}
        assert counts["image_encoder"] == image and counts["image_decoder"] == decoder
    if name == "m3ae":
        joint = (image + 1 * w + 2 * w  # cls, type embeddings
                 + CLIP_BPE_VOCAB * w)  # token embedding (text positions are sin-cos)
        dec = (decoder - (512 * 768 + 768)  # joint decoder without the pixel head ...
               + 512 + 2 * 512)             # ... plus a second mask token and type embeddings
        heads = (512 * 768 + 768) + (512 * CLIP_BPE_VOCAB + CLIP_BPE_VOCAB)
        assert sum(counts.values()) == joint + dec + heads
        assert "logit_scale" not in counts


@pytest.mark.parametrize("path", PAPER_FILES, ids=lambda p: os.path.basename(p)[:-3])
def test_tiny_variant_validates_on_builtin_data(path):
    config = load(path, "tiny")
    validation.validate(config, 8)
    demo = load(os.path.join(REPO, "configs", "maeclip_tiny.py"), None)
    assert config.input.source == "builtin"
    for field in ("total_steps", "batch_size", "checkpoint_every_steps"):  # the demo's budget
        assert config[field] == demo[field], field
    assert config.optimizer.lr == demo.optimizer.lr
    assert config.model.image.variant == "mu/8" and config.input.image_size == 64
    assert ("zero_shot" in config.evals) == (config.model.name in ("clip", "maeclip"))
    config.model.image.pooling = "max"  # the ablation is one field
    validation.validate(config, 8)
    with pytest.raises(ValueError, match="tiny"):
        load(path, "huge")


def test_mae_config_with_zero_shot_says_it_does_not_apply():
    """Zero-shot on MAE validates, and is skipped as not applicable, naming what is missing."""
    from maeclip_jax import config_lib, evaluation, models, sharding
    from maeclip_jax.data.tokenizer import get_tokenizer
    config = load(os.path.join(REPO, "configs", "mae_cc12m.py"), "tiny")
    config.evals.zero_shot = config_lib.base_config().evals.zero_shot
    validation.validate(config, 8)
    config.model.text.vocab_size = get_tokenizer("builtin_words", 32).vocab_size
    evs = evaluation.build_evaluators(config, models.build(config), None,
                                      sharding.make_mesh({"data": -1}))
    assert evaluation.not_applicable(evs) == {
        "zero_shot": "needs image_embedding and text_embedding, which model 'mae' does not have"}
    assert evs["zero_shot"].run(None) == {}


def test_objectives_a_model_cannot_train_are_rejected():
    config = load(os.path.join(REPO, "configs", "m3ae_cc12m.py"), "tiny")
    config.loss.contrastive = 1.0
    with pytest.raises(validation.ConfigError, match=r"config\.loss\.contrastive"):
        validation.validate(config, 8)
    config = load(os.path.join(REPO, "configs", "clip_cc12m.py"), "tiny")
    config.loss.text_reconstruction = 0.5
    with pytest.raises(validation.ConfigError, match=r"config\.loss\.text_reconstruction"):
        validation.validate(config, 8)


def test_paper_config_evaluates_on_imagenet_and_says_so_before_training(tmp_path):
    """The paper configs probe and zero-shot on TFDS imagenet2012; without it prepared, the
    evaluators fail when built (before any training) naming the field and the way out."""
    from maeclip_jax import evaluation, models, sharding
    from maeclip_jax.data.tokenizer import get_tokenizer
    config = load(os.path.join(REPO, "configs", "clip_laion.py"))
    assert config.evals.linear_probe.dataset == "tfds:imagenet2012"
    assert config.evals.zero_shot.dataset == "tfds:imagenet2012"
    config.evals.linear_probe.data_dir = str(tmp_path)  # nothing prepared there
    del config.evals["zero_shot"]
    tok = get_tokenizer("builtin_words", 16)
    config.model.text.vocab_size = tok.vocab_size
    mesh = sharding.make_mesh({"data": -1})
    with pytest.raises(FileNotFoundError, match=r"config\.evals\.linear_probe\.dataset=builtin"):
        evaluation.build_evaluators(config, models.build(config), tok, mesh)
