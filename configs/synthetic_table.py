"""The paper's 4-token table, one block (B1): MDM against VMD on D1 and D2 at
NFE 1 and NFE 4 (PAPERS.md section 2). The README's main job; minutes on a CPU.

  python -m vmd_jax.main --config=configs/synthetic_table.py --workdir=runs/table
"""

import os

import ml_collections

from vmd_jax.config import load_config_file

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config():
  runs = ml_collections.ConfigDict()
  for data, steps in (("d1", 3000), ("d2", 5000)):
    for kind in ("md4", "vmd"):
      c = load_config_file(os.path.join(HERE, f"synthetic_{kind}.py"))
      c.data.synthetic = data
      c.train.num_steps = steps
      runs[f"{kind}_{data}"] = c
  config = ml_collections.ConfigDict()
  config.runs = runs
  return config
