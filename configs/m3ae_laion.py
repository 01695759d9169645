r"""M3AE, the paper's high-sample regime (1.4B internal pairs; LAION-400M/2B or DataComp as
public stand-ins), 13B examples seen.

ONE joint ViT-B/16-sized encoder over [CLS, visible patches, visible text tokens] with modality-
type embeddings; 75% of patches and 75% of real text tokens masked (padding never visible, never
a target); 8x512 joint decoder; loss = image MSE + 0.5 x masked-token cross-entropy. No
contrastive loss.
224 px, global batch 4,096 (the MAE recipe: AdamW (0.9, 0.95), wd 0.05, lr 2.4e-3), warm-up +
cosine decay, bf16 compute with float32 parameters.
Budget choices the poster does not state are documented in maeclip_jax/paper_configs.py.

Command (needs the training data as img2dataset shards):
  python -m maeclip_jax.main --config=configs/m3ae_laion.py --workdir=gs://BUCKET/m3ae_laion \
      --config.input.data='gs://BUCKET/laion400m/{00000..41407}.tar'
The pooling ablation: add --config.model.image.pooling=max (or cls, gap, map).
It logs losses, learning rate, examples/s and MFU, checkpoints every 2,000 steps, evaluates
every
10,000 steps, and at the end prints a table with linear_probe/top1 from the joint encoder run on
the image alone (no zero-shot: M3AE has no text embedding).
Without --config.input.data it stops at once and says which data is missing and how to give it.

Small variant on the built-in data (minutes on a 2-core CPU; same model family and objectives,
ViT-mu/8 at 64 px, batch 128, 400 steps):
  python -m maeclip_jax.main --config=configs/m3ae_laion.py:tiny --workdir=/tmp/m3ae_laion_tiny
"""
from maeclip_jax.paper_configs import paper_config


def get_config(arg=None):
    return paper_config("m3ae", "laion", arg)
