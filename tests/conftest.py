"""Test set-up: 8 fake CPU devices (before jax is imported anywhere), quiet TensorFlow, and the
tiny config every test starts from."""
import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**overrides):
    """A model small enough for a unit test: 'test' towers (width 32, 1 block), 32x32 images,
    patch 8 (16 patches), 12 text tokens, batch 16."""
    from maeclip_jax import config_lib
    c = config_lib.base_config()
    c.name = "test"
    c.total_steps = 10
    c.batch_size = 16
    c.log_every_steps = 5
    c.checkpoint_every_steps = 5
    c.input.image_size = 32
    c.input.max_text_len = 12
    c.model.image.variant = "test/8"
    c.model.text.variant = "test"
    c.model.decoder = dict(width=32, depth=1, mlp_dim=64, num_heads=2)
    c.model.embed_dim = 32
    c.optimizer.warmup_steps = 2
    c.evals.linear_probe.num_examples = 128
    c.evals.zero_shot.num_examples = 64
    for key, value in overrides.items():
        node = c
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    return c


def model_config(name: str, **overrides):
    """tiny_config sizes with the objectives and evaluators of `configs/{name}_*.py:tiny`."""
    from maeclip_jax import paper_configs
    paper = paper_configs.paper_config(name, "cc12m", "tiny")
    config = tiny_config(**overrides)
    config.model.name = name
    config.loss = paper.loss
    config.evals = paper.evals
    config.evals.linear_probe.num_examples = 128
    if "zero_shot" in config.evals:
        config.evals.zero_shot.num_examples = 64
    return config


@pytest.fixture
def config():
    return tiny_config()
