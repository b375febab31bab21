"""MDM-Prime rows for the 4-token table (B1): B1's MDM runs with each token of the
V = 10 digits written as l = 2 sub-token digits in base 4 (Chao et al. 2025,
arXiv 2505.18495). Same model, data, steps and evaluation as
``configs/synthetic_table.py``'s MD4 rows (3,000 steps on D1, 5,000 on D2); NFE 4
reveals one token per call in random order, NFE 1 all at once.

  python -m vmd_jax.main --config=configs/synthetic_table_prime.py --workdir=runs/table_prime
"""

import ml_collections

from vmd_jax.configs import synthetic_md4, synthetic_table

PRIME_DIGITS = 2


def get_config():
  runs = ml_collections.ConfigDict()
  for data in ("d1", "d2"):
    c = synthetic_md4.get_config()
    c.data.synthetic.table = data
    c.train.num_steps = synthetic_table.SETTINGS[(data, "md4")]["train.num_steps"]
    c.diffusion.prime_digits = PRIME_DIGITS
    runs[f"prime_{data}"] = c
  config = ml_collections.ConfigDict()
  config.runs = runs
  return config
