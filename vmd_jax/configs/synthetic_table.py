"""The paper's 4-token table, one block (B1): MDM against VMD on D1 and D2 at
NFE 1 and NFE 4 (Zhang et al. 2025, arXiv:2510.23606). The README's main job; minutes on a CPU.

Per-dataset VMD settings, from what docs/vmd_settings.md measured to work and the
structure of the data: D1 (10 sequences) with beta = 0.03 and 3,000 steps; D2
(100 sequences, so about 100 clusters of encodings in the 2-D latent) with
beta = 0.1, 8,000 steps and a 128-component mixture prior. MDM: 3,000 / 5,000.

  python -m vmd_jax.main --config=configs/synthetic_table.py --workdir=runs/table
"""


import ml_collections

from vmd_jax.configs import synthetic_md4, synthetic_vmd


# (data, kind) -> overrides of configs/synthetic_{kind}.py
SETTINGS = {
    ("d1", "md4"): {"train.num_steps": 3000},
    ("d1", "vmd"): {"train.num_steps": 3000, "diffusion.beta": 0.03},
    ("d2", "md4"): {"train.num_steps": 5000},
    ("d2", "vmd"): {"train.num_steps": 8000, "diffusion.beta": 0.1, "prior.components": 128},
}


def get_config():
  runs = ml_collections.ConfigDict()
  for (data, kind), overrides in SETTINGS.items():
    c = {"md4": synthetic_md4, "vmd": synthetic_vmd}[kind].get_config()
    c.data.synthetic.table = data
    for field, value in overrides.items():
      group, key = field.split(".")
      c[group][key] = value
    runs[f"{kind}_{data}"] = c
  config = ml_collections.ConfigDict()
  config.runs = runs
  return config
