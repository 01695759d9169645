"""Every documented config field can be set from the command line (`--config.a.b=value`), as
absl + ml_collections parse it in maeclip_jax.main, and the override reaches what is built."""
import os

import jax
import pytest
from absl import flags
from ml_collections import config_flags

from conftest import REPO
from maeclip_jax import models, train
from maeclip_jax.data import tokenizer as tokenizers


def parse(config_arg: str, *overrides: str):
    """The config exactly as `python -m maeclip_jax.main --config=... <overrides>` sees it."""
    argv = ["main", f"--config={os.path.join(REPO, 'configs', config_arg)}", *overrides]
    fv = flags.FlagValues()
    # main.py's definition; sys_argv stands in for the process's command line, which
    # ml_collections reads the override names from.
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=False,
                                    sys_argv=argv)
    fv(argv)
    return fv.config


TOWER = ["--config.model.image.width=96", "--config.model.image.depth=2",
         "--config.model.image.num_heads=3", "--config.model.image.mlp_dim=160",
         "--config.model.image.patch_size=16", "--config.model.text.width=64",
         "--config.model.text.depth=1", "--config.model.text.vocab_size=300",
         "--config.peak_flops_per_device=1e12", "--config.model.image.pooling=max"]


@pytest.mark.parametrize("config_arg", ["maeclip_tiny.py", "clip_laion.py:tiny",
                                        "maeclip_laion.py"])
def test_tower_sizes_and_unset_fields_can_be_overridden(config_arg):
    c = parse(config_arg, *TOWER)
    assert (c.model.image.width, c.model.image.depth, c.model.image.patch_size) == (96, 2, 16)
    assert c.model.text.vocab_size == 300 and c.peak_flops_per_device == 1e12
    assert c.model.image.pooling == "max"
    c.input.source, c.input.tokenizer = "builtin", "builtin_words"  # no data file needed here
    c.input.image_size = 64
    model = models.build(c)
    params = jax.eval_shape(lambda: model.init(
        jax.random.PRNGKey(0), jax.numpy.zeros((1, 64, 64, 3)), jax.numpy.ones((1, 8), int),
        None if not model.has_decoder else __import__("maeclip_jax.masking").masking.random_mask(
            jax.random.PRNGKey(0), 1, model.num_patches, 0.75)))["params"]
    emb = params["image_encoder"]["embedding"]["kernel"]
    assert emb.shape == (16, 16, 3, 96)  # patch 16, width 96
    assert sorted(params["image_encoder"]["encoder"]) == ["block0", "block1", "norm"]
    assert params["text_encoder"]["token_embedding"]["embedding"].shape == (300, 64)


def test_unset_vocab_size_comes_from_the_tokenizer_and_a_wrong_one_is_named():
    c = parse("maeclip_tiny.py")
    assert c.model.text.vocab_size is None
    tok = tokenizers.from_config(c.input)
    assert train.prepare_config(c, tok).model.text.vocab_size == tok.vocab_size
    bad = parse("maeclip_tiny.py", "--config.model.text.vocab_size=7")
    with pytest.raises(ValueError, match="config.model.text.vocab_size=7"):
        train.prepare_config(bad, tok)


def test_m3ae_loss_fields_can_be_overridden():
    c = parse("m3ae_cc12m.py:tiny", "--config.loss.m3ae=2.0", "--config.loss.m3ae_text_weight=0.25")
    assert (c.loss.m3ae, c.loss.m3ae_text_weight) == (2.0, 0.25)
    c = parse("maeclip_tiny.py", "--config.loss.text_reconstruction=0.5")
    assert c.loss.text_reconstruction == 0.5 and c.loss.m3ae == 0.0
