"""VMD on Sudoku (Zhang et al. 2025, arXiv:2510.23606, the VMD rows of the table).

Data, model size, training and evaluation as ``configs/sudoku_md4.py`` (read its
docstring: training CSVs, the held-out 1,000 puzzles, greedy values with
``eval.temperature = 0``, and the full-size GPU overrides, to which add
``--config.model.encoder_width=384 --config.model.encoder_depth=2
--config.model.encoder_heads=6``; the evaluation here takes about twice as long
as MD4's, once per prior). The VMD settings are the defaults measured in
docs/vmd_settings.md: latent dimension 2, KL weight beta = 0.1 with no annealing,
an encoder of x_0 only (so the reported NELBO is a bound), z through adaLN; and
the Gaussian-mixture prior fitted to the encodings after training, so every
setting is evaluated twice, with z ~ N(0, I) (``top_prob:5``) and with z from the
mixture (``top_prob:5/mixture``).

  python -m vmd_jax.main --config=configs/sudoku_vmd.py --workdir=runs/sudoku_vmd
  python -m vmd_jax evaluate --workdir=runs/sudoku_vmd --data=PATH/puzzles.csv
"""

from vmd_jax.configs import sudoku_md4


def get_config():
  c = sudoku_md4.get_config()
  c.model.kind = "vmd"
  c.model.latent_dim = 2
  c.model.latent_mode = "adaln"
  c.model.encoder_sees_xt = False      # True gives no likelihood bound (docs/vmd_settings.md)
  c.model.encoder_pooling = "mean"
  c.model.encoder_width = 96          # CPU size, as the denoiser's width
  c.model.encoder_depth = 1
  c.model.encoder_heads = 4
  c.diffusion.beta = 0.1               # beta = 1 collapses (docs/vmd_settings.md)
  c.diffusion.free_bits = 0.0
  c.prior.kind = "mixture"             # evaluates both N(0, I) and the mixture
  c.prior.components = 16
  c.prior.fit_samples = 20000
  return c
