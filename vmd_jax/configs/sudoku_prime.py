"""MDM-Prime on Sudoku (Chao et al. 2025, arXiv 2505.18495): ``configs/sudoku_md4.py``
(data, model, training, greedy top-prob / top-prob-margin evaluation at NFE 5, 10,
20) with each cell's 9 values written as l = 2 digits in base 3 (9 = 3^2 codes,
all valid), each digit masked on its own. The confidence orders rank whole cells
(``prime.sample``'s ``unit="token"``), so NFE counts network calls as for MD4.

  python -m vmd_jax.main --config=configs/sudoku_prime.py --workdir=runs/sudoku_prime
"""

from vmd_jax.configs import sudoku_md4


def get_config():
  c = sudoku_md4.get_config()
  c.diffusion.prime_digits = 2
  return c
