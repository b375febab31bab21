"""VMD on a synthetic joint, with the settings measured to work (docs/vmd_settings.md):
latent dimension 2, beta = 0.1, an encoder of x_0 only, z added through adaLN;
plus the learned (Gaussian-mixture) prior fitted to the encodings after training.

  python -m vmd_jax.main --config=configs/synthetic_vmd.py --workdir=runs/vmd_d1
"""

from vmd_jax.trainer.config import base_config


def get_config():
  c = base_config()
  c.data.name = "synthetic"
  c.data.synthetic.table = "d1"
  c.model.kind = "vmd"
  c.model.latent_dim = 2
  c.model.latent_mode = "adaln"
  c.model.encoder_sees_xt = False
  c.diffusion.beta = 0.1
  c.prior.kind = "mixture"         # evaluates both N(0, I) and the mixture
  c.eval.settings = "random:1,random:4"
  return c
