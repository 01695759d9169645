r"""MAE, the paper's low-sample regime: CC12M (11.3M pairs available), 32 epochs.

image-only masked autoencoder: 75% of patches masked, ViT-B/16 encoder on the visible 25%, 8x512
decoder, MSE on masked patches (per-patch normalised pixels). No text tower, no contrastive
loss.
224 px, global batch 4,096 (the MAE recipe: AdamW (0.9, 0.95), wd 0.05, lr 2.4e-3), warm-up +
cosine decay, bf16 compute with float32 parameters.
Budget choices the poster does not state are documented in maeclip_jax/paper_configs.py.

Command (needs the training data as img2dataset shards):
  python -m maeclip_jax.main --config=configs/mae_cc12m.py --workdir=gs://BUCKET/mae_cc12m \
      --config.input.data='gs://BUCKET/cc12m/{00000..01242}.tar'
The pooling ablation: add --config.model.image.pooling=max (or cls, gap, map).
It logs losses, learning rate, examples/s and MFU, checkpoints every 2,000 steps, evaluates
every
10,000 steps, and at the end prints a table with linear_probe/top1 (no zero-shot: MAE has no
text embedding).
Without --config.input.data it stops at once and says which data is missing and how to give it.

Small variant on the built-in data (minutes on a 2-core CPU; same model family and objectives,
ViT-mu/8 at 64 px, batch 128, 400 steps):
  python -m maeclip_jax.main --config=configs/mae_cc12m.py:tiny --workdir=/tmp/mae_cc12m_tiny
"""
from maeclip_jax.paper_configs import paper_config


def get_config(arg=None):
    return paper_config("mae", "cc12m", arg)
