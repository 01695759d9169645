r"""MAE-CLIP, the paper's high-sample regime (1.4B internal pairs; LAION-400M/2B or DataComp as
public stand-ins), 13B examples seen.

CLIP's two towers; each step one unmasked pass (contrastive loss) and one masked pass of the
SAME image encoder on 25% of the patches + 8x512 MAE decoder (MSE on masked patches); loss = 1.0
x CLIP + 1.0 x MAE. Optional text reconstruction through the same text tower:
--config.loss.text_reconstruction=0.5 (off by default; the paper's exact choice is not public).
224 px, global batch 32,768 (AdamW (0.9, 0.98), wd 0.2, lr 5e-4), warm-up + cosine decay, bf16
compute with float32 parameters.
Budget choices the poster does not state are documented in maeclip_jax/paper_configs.py.

Command (needs the training data as img2dataset shards):
  python -m maeclip_jax.main --config=configs/maeclip_laion.py --workdir=gs://BUCKET/maeclip_laion \
      --config.input.data='gs://BUCKET/laion400m/{00000..41407}.tar'
The pooling ablation: add --config.model.image.pooling=max (or cls, gap, map).
It logs losses, learning rate, examples/s and MFU, checkpoints every 2,000 steps, evaluates
every
10,000 steps, and at the end prints a table with linear_probe/top1, zero_shot/top1,
zero_shot/top5.
Without --config.input.data it stops at once and says which data is missing and how to give it.

Small variant on the built-in data (minutes on a 2-core CPU; same model family and objectives,
ViT-mu/8 at 64 px, batch 128, 400 steps):
  python -m maeclip_jax.main --config=configs/maeclip_laion.py:tiny --workdir=/tmp/maeclip_laion_tiny

Preparing the data (img2dataset, from a parquet of url + caption):
  img2dataset --url_list=laion400m-meta --input_format=parquet --url_col=URL \
      --caption_col=TEXT --output_format=webdataset --output_folder=gs://BUCKET/laion400m \
      --image_size=256 --resize_mode=keep_ratio --processes_count=16 --thread_count=64
(--output_format=tfrecord writes .tfrecord shards instead; both are read.) Then a tokenizer:
  python -m maeclip_jax.tools.train_tokenizer --input='gs://BUCKET/laion400m/{00000..00099}.tar' \
      --output=gs://BUCKET/tokenizers/laion_32k --vocab_size=32000
and add --config.input.tokenizer_model=gs://BUCKET/tokenizers/laion_32k.model.

Data fields (config.input):
  source        'img2dataset' (or 'tfds', 'mixture', 'builtin')
  data          glob / brace pattern(s) of shards, ';'-separated, local or gs://
  format        'auto' (by extension), 'tar' or 'tfrecord'
  tokenizer     'sentencepiece' with tokenizer_model = the .model file
  crop_scale    random-resized-crop area range; crop_ratio, flip
  shuffle_buffer, cycle_length   raw-record shuffle buffer; shards read at once
  first_batch_timeout_s          stop with an error naming a shard if nothing arrives
A mixture: --config.input.source=mixture and, in a config file,
  c.input.mixture = {"laion": {"source": "img2dataset", "data": "...", "weight": 0.8},
                     "cc12m": {"source": "img2dataset", "data": "...", "weight": 0.2}}
Training logs `data/skipped`: broken examples (corrupt JPEG, empty / non-UTF-8 caption,
truncated tar, empty shard) dropped so far by this process.
"""
from maeclip_jax.paper_configs import paper_config


def get_config(arg=None):
    return paper_config("maeclip", "laion", arg)
