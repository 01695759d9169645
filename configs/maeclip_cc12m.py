r"""MAE-CLIP, the paper's low-sample regime: CC12M (11.3M pairs available), 32 epochs.

CLIP's two towers; each step one unmasked pass (contrastive loss) and one masked pass of the
SAME image encoder on 25% of the patches + 8x512 MAE decoder (MSE on masked patches); loss = 1.0
x CLIP + 1.0 x MAE. Optional text reconstruction through the same text tower:
--config.loss.text_reconstruction=0.5 (off by default; the paper's exact choice is not public).
224 px, global batch 8,192 (AdamW (0.9, 0.98), wd 0.2, lr 5e-4), warm-up + cosine decay, bf16
compute with float32 parameters.
Budget choices the poster does not state are documented in maeclip_jax/paper_configs.py.

Command (needs img2dataset shards, a sentencepiece model trained on their captions
(python -m maeclip_jax.tools.train_tokenizer) and TFDS imagenet2012 prepared in a data_dir,
plus a file of the 1,000 ImageNet class names, one per line in label order):
  python -m maeclip_jax.main --config=configs/maeclip_cc12m.py --workdir=gs://BUCKET/maeclip_cc12m \
      --config.input.data='gs://BUCKET/cc12m/{00000..01242}.tar' \
      --config.input.tokenizer_model=gs://BUCKET/tokenizers/cc12m_32k.model \
      --config.evals.linear_probe.data_dir=gs://BUCKET/tensorflow_datasets \
      --config.evals.zero_shot.data_dir=gs://BUCKET/tensorflow_datasets \
      --config.evals.zero_shot.classes_file=gs://BUCKET/imagenet_classes.txt
The pooling ablation: add --config.model.image.pooling=max (or cls, gap, map).
It logs losses, learning rate, examples/s and MFU, checkpoints every 2,000 steps, evaluates
every 10,000 steps, and at the end prints a table with linear_probe/top1 (ridge probe on 100k
ImageNet training images, scored on the validation set), zero_shot/top1 and zero_shot/top5; the
poster reports an ImageNet linear probe of 58.9 for this row (11.3M regime).
A missing input, tokenizer model or ImageNet stops the run at start-up, naming the field and
what to give it (--config.evals.linear_probe.dataset=builtin evaluates on the built-in data
instead).

Small variant on the built-in data (about 5 minutes on a 2-core CPU; the same model and
objectives at the demo's sizes: ViT-mu/8 at 64 px, batch 32, 1,600 steps, GAP pooling):
  python -m maeclip_jax.main --config=configs/maeclip_cc12m.py:tiny --workdir=/tmp/maeclip_cc12m_tiny
It should print linear_probe/top1 0.43 and zero_shot/top1 0.30 (seed 0; both seeds and MAX
pooling in experiments/results/paper_table.md; chance is 0.04).
"""
from maeclip_jax.paper_configs import paper_config


def get_config(arg=None):
    return paper_config("maeclip", "cc12m", arg)
