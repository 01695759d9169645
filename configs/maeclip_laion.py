r"""MAE-CLIP, the paper's high-sample regime (1.4B internal pairs; LAION-400M/2B or DataComp as
public stand-ins), 13B examples seen.

CLIP's two towers; each step one unmasked pass (contrastive loss) and one masked pass of the
SAME image encoder on 25% of the patches + 8x512 MAE decoder (MSE on masked patches); loss = 1.0
x CLIP + 1.0 x MAE. Optional text reconstruction through the same text tower:
--config.loss.text_reconstruction=0.5 (off by default; the paper's exact choice is not public).
224 px, global batch 32,768 (AdamW (0.9, 0.98), wd 0.2, lr 5e-4), warm-up + cosine decay, bf16
compute with float32 parameters.
Budget choices the poster does not state are documented in maeclip_jax/paper_configs.py.

Command (needs img2dataset shards, a sentencepiece model trained on their captions
(python -m maeclip_jax.tools.train_tokenizer) and TFDS imagenet2012 prepared in a data_dir,
plus a file of the 1,000 ImageNet class names, one per line in label order):
  python -m maeclip_jax.main --config=configs/maeclip_laion.py --workdir=gs://BUCKET/maeclip_laion \
      --config.input.data='gs://BUCKET/laion400m/{00000..41407}.tar' \
      --config.input.tokenizer_model=gs://BUCKET/tokenizers/laion_32k.model \
      --config.evals.linear_probe.data_dir=gs://BUCKET/tensorflow_datasets \
      --config.evals.zero_shot.data_dir=gs://BUCKET/tensorflow_datasets \
      --config.evals.zero_shot.classes_file=gs://BUCKET/imagenet_classes.txt
The pooling ablation: add --config.model.image.pooling=max (or cls, gap, map).
It logs losses, learning rate, examples/s and MFU, checkpoints every 2,000 steps, evaluates
every 10,000 steps, and at the end prints a table with linear_probe/top1 (ridge probe on 100k
ImageNet training images, scored on the validation set), zero_shot/top1 and zero_shot/top5; the
poster reports ImageNet linear probe 75.7 (GAP) / 76.6 (MAX) and zero-shot 57.4 / 60.9 for this
row (its 1.4B internal set).
A missing input, tokenizer model or ImageNet stops the run at start-up, naming the field and
what to give it (--config.evals.linear_probe.dataset=builtin evaluates on the built-in data
instead).

Small variant on the built-in data (about 5 minutes on a 2-core CPU; the same model and
objectives at the demo's sizes: ViT-mu/8 at 64 px, batch 32, 1,600 steps, GAP pooling):
  python -m maeclip_jax.main --config=configs/maeclip_laion.py:tiny --workdir=/tmp/maeclip_laion_tiny
It should print linear_probe/top1 0.43 and zero_shot/top1 0.30 (seed 0; both seeds and MAX
pooling in experiments/results/paper_table.md; chance is 0.04).

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
