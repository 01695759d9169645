r"""A small MAE-CLIP on the built-in dataset: the embedded default, minutes on a 2-core CPU.

Command:
  python -m maeclip_jax.main --config=configs/maeclip_tiny.py --workdir=/tmp/maeclip_tiny

It trains a ViT-mu/8 image tower (3 blocks, width 128) and a 3-block text tower on 64x64 synthetic
scenes for a few minutes, logs the losses, then prints a table holding `linear_probe/top1` and
`zero_shot/top1` on the built-in evaluation split (24 colour x shape classes; chance = 0.042).
Re-running the same command with the same workdir resumes, or just re-evaluates a finished run.
"""
from maeclip_jax import config_lib


def get_config(arg=None):
    del arg
    c = config_lib.base_config()
    c.name = "maeclip_tiny"
    c.total_steps = 400
    c.batch_size = 128
    c.log_every_steps = 50
    c.checkpoint_every_steps = 200
    c.optimizer.lr = 1e-3
    c.optimizer.warmup_steps = 40
    return c
