"""Block MDM (BD3-LM, Arriola et al. 2025) on text8: blocks of 4 characters.

The text8 data, model size and training recipe of ``configs/text8_md4.py`` (read
its docstring for the data options: the real corpus, or local text offline),
with ``diffusion.block_size = 4`` (L' = 4, 64 blocks of a 256-character window):
training on BD3-LM's vectorised [x_t ; x_0] pass with one time per block and the
clipped mask rate U[0.45, 0.95] for L' = 4 (Arriola et al. 2025, arXiv:2503.09573; evaluation
always uses the unclipped bound). Sampling: blocks left to right with a KV cache,
``ancestral:256`` = 4 steps per block. Paper (VMD, Zhang et al. 2025, arXiv:2510.23606): BD3-LM
L' = 4 <= 1.52 test BPC.

  python -m vmd_jax.main --config=configs/text8_bd3.py --workdir=runs/text8_bd3 \
      --config.data.text8.path=/data/text8.zip

A tiny offline CPU run (Python's documentation as the text; about a minute):

  python -m vmd_jax.main --config=configs/text8_bd3.py --workdir=/tmp/t8_bd3 \
      --config.data.text8.source=local --config.data.text8.data_dir=/tmp/t8_tfds \
      --config.data.seq_len=64 --config.model.width=32 --config.model.depth=1 \
      --config.model.num_heads=2 --config.train.batch_size=8 \
      --config.train.num_steps=20 --config.train.warmup_steps=5 \
      --config.train.log_every=10 --config.eval.batch_size=64 \
      --config.eval.settings=ancestral:16
"""

from vmd_jax.configs import text8_md4


def get_config():
  c = text8_md4.get_config()
  c.diffusion.block_size = 4
  c.diffusion.train_mask_rate_min = 0.45   # BD3-LM's clipped range for L' = 4
  c.diffusion.train_mask_rate_max = 0.95
  c.eval.settings = "ancestral:256"        # 4 steps for each of the 64 blocks
  return c
