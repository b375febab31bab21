"""MD4 (plain masked diffusion) on a synthetic joint (Zhang et al. 2025, arXiv:2510.23606).

  python -m vmd_jax.main --config=configs/synthetic_md4.py --workdir=runs/md4_d2 \
      --config.data.synthetic.table=d2
"""

from vmd_jax.trainer.config import base_config


def get_config():
  c = base_config()
  c.data.name = "synthetic"
  c.data.synthetic.table = "d1"          # two_token_uniform, two_token_nonuniform, d1, d2
  c.model.kind = "md4"
  # NFE 1: all tokens at once; NFE 4: one token per call in random order.
  c.eval.settings = "random:1,random:4"
  return c
