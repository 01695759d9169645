r"""CLIP, the paper's high-sample regime (1.4B internal pairs; LAION-400M/2B or DataComp as
public stand-ins), 13B examples seen.

ViT-B/16 image tower + 12x512 causal text tower, projections to 512, symmetric InfoNCE with a
learned temperature capped at 100.
224 px, global batch 32,768 (AdamW (0.9, 0.98), wd 0.2, lr 5e-4), warm-up + cosine decay, bf16
compute with float32 parameters.
Budget choices the poster does not state are documented in maeclip_jax/paper_configs.py.

Command (needs the training data as img2dataset shards):
  python -m maeclip_jax.main --config=configs/clip_laion.py --workdir=gs://BUCKET/clip_laion \
      --config.input.data='gs://BUCKET/laion400m/{00000..41407}.tar'
The pooling ablation: add --config.model.image.pooling=max (or cls, gap, map).
It logs losses, learning rate, examples/s and MFU, checkpoints every 2,000 steps, evaluates
every
10,000 steps, and at the end prints a table with linear_probe/top1, zero_shot/top1,
zero_shot/top5.
Without --config.input.data it stops at once and says which data is missing and how to give it.

Small variant on the built-in data (minutes on a 2-core CPU; same model family and objectives,
ViT-mu/8 at 64 px, batch 128, 400 steps):
  python -m maeclip_jax.main --config=configs/clip_laion.py:tiny --workdir=/tmp/clip_laion_tiny
"""
from maeclip_jax.paper_configs import paper_config


def get_config(arg=None):
    return paper_config("clip", "laion", arg)
