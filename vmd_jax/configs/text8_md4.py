"""MD4 on text8: the md4 paper's recipe (Shi et al. 2024, arXiv:2406.04329).

md4's network (``md4/networks/transformer.py`` as its ``DiscreteClassifier``
builds it for ``configs/md4/text8.py``): 12 layers, 12 heads, width 768; tokens
embedded at 64 and projected to 768; the time's 64 sinusoidal features through
a 256-wide MLP to a 64-wide conditioning that drives adaLN-zero through a
sigmoid; RoPE, no absolute positions; a sigmoid GLU MLP with hidden size
int(8/3 * 768) rounded up to a multiple of 32 (2048); no biases in attention, MLP
and head; md4's depth-scaled MLP init: 88,734,272 parameters, md4's count
(3,702,336 at md4's 4-layer, 4-head, width-256 size). Sequences of 256
characters, batch 512, AdamW lr 3e-4 with 2,000 warmup steps and cosine decay,
weight decay 0.03, dropout 0.05, EMA 0.9999, 1M steps (16 TPU v5e in the paper, < 1 day); the linear schedule
alpha(t) = 1 - t (md4's text8 config) with md4's eps shift, the continuous-time
NELBO. Paper: test BPC <= 1.37. eval.json's ``nelbo_bits_per_token`` (and its
``_stderr``) is the test bits per character over the last 5M characters
(``--config.data.num_eval=N``: over its first N windows of 256 only).

Data: ``data.text8.source = "text8"`` reads the real corpus from ``data.text8.path``
(text8 or text8.zip), else the tfds manual dir
(``<data.text8.data_dir>/downloads/manual``), else downloads it; prepared once under
``data.text8.data_dir`` (default ~/tensorflow_datasets). Offline, use any local
text in text8's format instead: ``--config.data.text8.source=local`` with
``--config.data.text8.path=FILE_OR_DIR`` (normalised to a-z and space, split
90/5/5), or with ``data.text8.path`` empty for Python's own documentation text.

  python -m vmd_jax.main --config=configs/text8_md4.py --workdir=runs/text8_md4 \
      --config.data.text8.path=/data/text8.zip

A tiny offline CPU run (Python's documentation as the text; ~1 minute):

  python -m vmd_jax.main --config=configs/text8_md4.py --workdir=/tmp/t8 \
      --config.data.text8.source=local --config.data.text8.data_dir=/tmp/t8_tfds \
      --config.model.width=32 --config.model.depth=1 --config.model.num_heads=2 \
      --config.train.batch_size=8 --config.train.num_steps=20 \
      --config.train.warmup_steps=5 --config.train.log_every=10 \
      --config.eval.batch_size=64 --config.eval.nelbo_samples=1 \
      --config.eval.settings=ancestral:16
"""

from vmd_jax.trainer.config import base_config


def get_config():
  c = base_config()
  c.data.name = "text8"
  c.data.text8.source = "text8"        # "local": any text file/folder at text8.path (offline)
  c.data.text8.path = ""               # text8 / text8.zip; empty: manual dir, then download
  c.data.text8.data_dir = ""           # tfds data dir; empty: ~/tensorflow_datasets
  c.data.seq_len = 256

  c.model.kind = "md4"
  c.model.width = 768
  c.model.depth = 12
  c.model.num_heads = 12
  c.model.mlp_ratio = 8 / 3            # md4's GLU: int(8/3 * width) rounded up to 32
  c.model.mlp_multiple_of = 32
  c.model.mlp_type = "glu"             # sigmoid gate, sigmoid before adaLN (md4's "glu")
  c.model.use_bias = False
  c.model.depth_scaled_init = True
  c.model.embed_dim = 64               # md4's outside_embed at feature_dim 64
  c.model.cond_dim = 64                # md4's conditioning: feature_dim
  c.model.time_features = 64
  c.model.time_hidden = 256            # 4 * cond_dim
  c.model.position_embedding = "none"  # RoPE only
  c.model.dropout = 0.05
  c.model.dtype = "float32"            # "bfloat16" for speed on GPU / TPU
  c.model.attention = "einsum"         # fastest on CPU; "cudnn" with bfloat16 on GPU

  c.diffusion.schedule = "linear"      # md4's text8 config
  c.diffusion.eps = 1e-4
  c.diffusion.loss_steps = 0           # continuous-time NELBO
  c.diffusion.antithetic = True

  c.train.batch_size = 512
  c.train.num_steps = 1_000_000
  c.train.lr = 3e-4
  c.train.warmup_steps = 2000
  c.train.end_lr_factor = 0.0          # cosine to 0 (md4)
  c.train.weight_decay = 0.03
  c.train.b1 = 0.9
  c.train.b2 = 0.999
  c.train.grad_clip = 1.0
  c.train.ema_decay = 0.9999
  c.train.log_every = 1000
  c.train.checkpoint_every = 10000

  c.eval.batch_size = 512
  c.eval.nelbo_samples = 4             # time samples per test window for the BPC
  c.eval.settings = "ancestral:1000"   # decodes 4 samples (md4 samples with 1000 steps)
  c.eval.grid = "cosine"               # md4's text8 sampling grid
  c.eval.temperature = 1.0
  c.eval.top_p = 1.0
  return c
