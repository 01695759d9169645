r"""M3AE, the paper's low-sample regime: CC12M (11.3M pairs available), 32 epochs.

ONE joint ViT-B/16-sized encoder over [CLS, visible patches, visible text tokens] with modality-
type embeddings; 75% of patches and 75% of real text tokens masked (padding never visible, never
a target); 8x512 joint decoder; loss = image MSE + 0.5 x masked-token cross-entropy. No
contrastive loss.
224 px, global batch 4,096 (the MAE recipe: AdamW (0.9, 0.95), wd 0.05, lr 2.4e-3), warm-up +
cosine decay, bf16 compute with float32 parameters.
Budget choices the poster does not state are documented in maeclip_jax/paper_configs.py.

Command (needs img2dataset shards, a sentencepiece model trained on their captions
(python -m maeclip_jax.tools.train_tokenizer) and TFDS imagenet2012 prepared in a data_dir):
  python -m maeclip_jax.main --config=configs/m3ae_cc12m.py --workdir=gs://BUCKET/m3ae_cc12m \
      --config.input.data='gs://BUCKET/cc12m/{00000..01242}.tar' \
      --config.input.tokenizer_model=gs://BUCKET/tokenizers/cc12m_32k.model \
      --config.evals.linear_probe.data_dir=gs://BUCKET/tensorflow_datasets
The pooling ablation: add --config.model.image.pooling=max (or cls, gap, map).
It logs losses, learning rate, examples/s and MFU, checkpoints every 2,000 steps, evaluates
every 10,000 steps, and at the end prints a table with linear_probe/top1 (ridge probe on 100k
ImageNet training images, scored on the validation set) from the joint encoder run on the image
alone (no zero-shot: M3AE has no text embedding); the poster reports an ImageNet linear probe
of 52.5 for this row (11.3M regime).
A missing input, tokenizer model or ImageNet stops the run at start-up, naming the field and
what to give it (--config.evals.linear_probe.dataset=builtin evaluates on the built-in data
instead).

Small variant on the built-in data (about 5 minutes on a 2-core CPU; the same model and
objectives at the demo's sizes: ViT-mu/8 at 64 px, batch 32, 1,600 steps, GAP pooling):
  python -m maeclip_jax.main --config=configs/m3ae_cc12m.py:tiny --workdir=/tmp/m3ae_cc12m_tiny
It should print linear_probe/top1 0.34 (seed 0; both seeds and MAX pooling in
experiments/results/paper_table.md; chance is 0.04).
"""
from maeclip_jax.paper_configs import paper_config


def get_config(arg=None):
    return paper_config("m3ae", "cc12m", arg)
