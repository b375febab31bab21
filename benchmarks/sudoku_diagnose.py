"""Where a trained Sudoku run loses puzzles: its denoiser or its sampler.

For the first ``--num`` puzzles of ``--data`` and a run in ``--workdir``:

- ``single_cell``: one empty cell masked, every other cell of the solution given;
  the fraction whose argmax is the solution's value (the denoiser near the end of
  sampling);
- for each ``--settings`` ORDER:NFE and each reveal ``--units`` (MDM-Prime runs:
  "token" ranks whole cells, "digit" single digits; MDM has cells only): the
  fraction of puzzles solved and of empty cells right, greedy values.

  PYTHONPATH=. python benchmarks/sudoku_diagnose.py --workdir=runs/sudoku_prime \\
      --data=/tmp/sudoku/sudoku_rohanrao9m_10k_madelynredick.csv
"""

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from vmd_jax import prime
from vmd_jax.data import sudoku
from vmd_jax.trainer import config as config_lib
from vmd_jax.trainer.load import load

flags.DEFINE_string("workdir", None, "A trained Sudoku run.", required=True)
flags.DEFINE_string("data", None, "A Sudoku CSV (puzzles and solutions).", required=True)
flags.DEFINE_integer("num", 200, "Puzzles, from the first.")
flags.DEFINE_string("settings", "top_prob:20", "ORDER:NFE pairs.")
flags.DEFINE_list("units", ["token", "digit"], "Reveal units of a Prime run.")
FLAGS = flags.FLAGS


def single_cell_accuracy(model, params, x0, given, seed=0):
  rng = np.random.default_rng(seed)
  rows = np.arange(len(x0))
  cells = np.array([rng.choice(np.flatnonzero(~g)) for g in given])
  xt = x0.copy()
  xt[rows, cells] = model.vocab_size
  t = jnp.full((len(x0),), 1.0 / x0.shape[1])
  if model.prime_code:
    digits = model.prime_code.tokens_to_digits(jnp.asarray(xt))
    log_probs = prime.token_log_probs(model.denoise_fn(params)(digits, t), digits,
                                      model.prime_code)
  else:
    log_probs = model.denoise_fn(params)(jnp.asarray(xt), t)
  return float(np.mean(np.asarray(jnp.argmax(log_probs, -1))[rows, cells] == x0[rows, cells]))


def main(_):
  model, params, _ = load(FLAGS.workdir)
  grids = sudoku.load_sudoku_csv(FLAGS.data)
  x0 = grids.solutions[:FLAGS.num].astype(np.int32) - 1
  given = grids.puzzles[:FLAGS.num] != 0
  print(f"single_cell: {single_cell_accuracy(model, params, x0, given):.3f} of {len(x0)}")
  x_init = jnp.asarray(np.where(given, x0, model.vocab_size))
  for order, nfe in config_lib.parse_eval_settings(FLAGS.settings):
    for unit in FLAGS.units if model.prime_code else ["token"]:
      extra = {"unit": unit} if model.prime_code else {}
      samples, calls = model.sample(params, jax.random.key(0), x_init, nfe, order,
                                    temperature=0.0, **extra)
      samples = np.asarray(samples)
      solved = np.mean(sudoku.sudoku_solved(samples, x0, given))
      cells = np.mean(samples[~given] == x0[~given])
      print(f"{order}:{nfe} unit={unit}: {int(calls)} calls, solved {solved:.3f}, "
            f"empty cells right {cells:.3f}")


if __name__ == "__main__":
  app.run(main)
