"""GenMD4 on text8: MD4's recipe with a learned, token-dependent masking schedule.

Shi et al. 2024 (arXiv:2406.04329), "generalized state-dependent masking": one
exponent w_v per character v, alpha_v(t) = (1 - 2 eps)(1 - t^{w_v}) + eps
(``vmd_jax.genmd4``), all starting at 1 (the linear schedule, md4's
``power_init = 1.0``) and trained with the rest of the model: the NELBO's pathwise
gradient plus a two-sample REINFORCE leave-one-out term for the exponents. md4's
GenMD4 text8 config is its MD4 text8 config with ``model_type = "genmd4"`` and
``noise_schedule = "poly"``, one optimizer for every parameter; so is this one
(``configs/text8_md4.py`` with ``diffusion.kind = "genmd4"``). Paper: test
BPC <= 1.34 (MD4: <= 1.37). Sampling is ancestral only. eval.json's ``schedule``
holds the learned exponents (``genmd4/w_<v>``; v = 0..25 are a..z, 26 is space).

  python -m vmd_jax.main --config=configs/text8_genmd4.py --workdir=runs/text8_genmd4 \
      --config.data.text8.path=/data/text8.zip

Offline, with Python's documentation as text8-format text, as in text8_md4.py:
``--config.data.text8.source=local``.
"""

from vmd_jax.configs import text8_md4


def get_config():
  c = text8_md4.get_config()
  c.diffusion.kind = "genmd4"
  c.diffusion.genmd4_power_init = 1.0  # md4: every exponent starts linear
  c.train.schedule_lr = 0.0            # md4: the exponents share the network's lr
  return c
