"""The paper's 4-token table, two blocks (B2): block MDM against block VMD on D1
and D2 at NFE 2 and NFE 4 (arXiv:2510.23606, arXiv:2503.09573). Minutes on a CPU.

Two blocks of 2 tokens (``diffusion.block_size = 2``): block 2 is generated after
block 1, attending to it through the KV cache. NFE counts denoising calls in
total: NFE 2 is one step per block (both tokens of a block at once), NFE 4 one
token per step. Block VMD has one latent per block (a block-causal encoder,
z_b ~ q(z_b | x_0^{<=b})), each drawn from its own N(0, I) or from the mixture
fitted to all blocks' encodings.

  python -m vmd_jax.main --config=configs/synthetic_table_b2.py --workdir=runs/table_b2
"""


import ml_collections

from vmd_jax.configs import synthetic_md4, synthetic_vmd



def get_config():
  runs = ml_collections.ConfigDict()
  for data, steps in (("d1", 3000), ("d2", 5000)):
    for kind in ("md4", "vmd"):
      c = {"md4": synthetic_md4, "vmd": synthetic_vmd}[kind].get_config()
      c.data.synthetic.table = data
      c.diffusion.block_size = 2
      c.train.num_steps = steps
      c.eval.settings = "random:2,random:4"
      runs[f"block_{kind}_{data}"] = c
  config = ml_collections.ConfigDict()
  config.runs = runs
  return config
