"""MDM-Prime on text8 (Chao et al. 2025, arXiv 2505.18495): ``configs/text8_md4.py``
(the md4 recipe) with each of the 27 characters written as l sub-token digits,
each digit masked on its own: l = 2 (base 6, 36 codes of which 27 valid) by
default, ``--config.diffusion.prime_digits=4`` for base 3 (81 codes). The NELBO
(``vmd_jax.prime.nelbo_terms``) is a bound on -log p(x_0) over valid
characters, so eval.json's ``nelbo_bits_per_token`` is test bits per character,
comparable with MD4's.

  python -m vmd_jax.main --config=configs/text8_prime.py --workdir=runs/text8_prime \
      --config.data.text8.path=/data/text8.zip

docs/results.md's offline stand-in ("MDM-Prime") runs it with the overrides of its
text8 section.
"""

from vmd_jax.configs import text8_md4


def get_config():
  c = text8_md4.get_config()
  c.diffusion.prime_digits = 2
  return c
