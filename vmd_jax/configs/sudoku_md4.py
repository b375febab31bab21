"""MD4 (plain masked diffusion) on Sudoku (Zhang et al. 2025, arXiv:2510.23606, the MDM rows of the table).

Data: three public CSV files of 10,000 puzzles each, in ``$VMD_SUDOKU_DIR``
(default ``data/sudoku`` under the current directory). Get them with

  bash launch/get_sudoku.sh data/sudoku    # downloads and checks their sha256

or point ``--config.data.sudoku.train`` / ``--config.data.sudoku.eval`` at your
own CSVs (one header line, then ``puzzle,solution`` rows). Training: the solutions of
``sudoku_kaggle1m_10k_jerod92.csv`` and ``sudoku_rohanrao9m_10k_tilmanschweitzer.csv``
(20,000 grids, random masking of full solutions as in Kim et al. 2025; the
puzzles' givens play no part in training). Evaluation: the first 1,000 puzzles of
``sudoku_rohanrao9m_10k_madelynredick.csv`` (the 19 puzzles that file shares with
the tilmanschweitzer file lie outside its first 1,000 rows, so none is trained on).
At evaluation the givens stay fixed and the empty cells start masked; a puzzle
counts as solved when the grid is a valid Sudoku that keeps every given.

Sampling: the unmasking orders of Kim et al. 2025 at NFE 5, 10 and 20. Values are
taken greedily (``eval.temperature = 0``: the argmax at each revealed cell), which
is what a planner that picks the most confident cells does, and makes the MDM
numbers deterministic; ``--config.eval.temperature=1`` draws them instead.

The defaults are a CPU-sized run: 4,000 steps of a 0.67M-parameter model (learned
position embeddings; see ``sudoku_base``), about 23 minutes of training at the
0.35 s per step measured on 2 CPU cores, plus a few minutes of evaluation (70
network calls over the 1,000 puzzles), so MD4 and VMD together fit in an hour;
a small run, not one expected to reach the paper's accuracies:

  python -m vmd_jax.main --config=configs/sudoku_md4.py --workdir=runs/sudoku_md4

A full-size GPU run (a setting chosen here, untimed; not
taken from the paper, which publishes no architecture for Sudoku):

  python -m vmd_jax.main --config=configs/sudoku_md4.py --workdir=runs/sudoku_md4_gpu \
      --config.model.width=384 --config.model.depth=8 --config.model.num_heads=6 \
      --config.train.batch_size=256 --config.train.num_steps=100000 \
      --config.train.lr=3e-4 --config.train.warmup_steps=2000 \
      --config.train.ema_decay=0.9999 --config.data.sudoku.augment=True

Re-evaluate a trained workdir on another CSV (writes eval_<stem>.json):

  python -m vmd_jax evaluate --workdir=runs/sudoku_md4 --data=PATH/puzzles.csv
"""

import os

from vmd_jax.trainer.config import base_config

DATA_DIR = os.environ.get("VMD_SUDOKU_DIR", os.path.join("data", "sudoku"))
TRAIN_FILES = ("sudoku_kaggle1m_10k_jerod92.csv", "sudoku_rohanrao9m_10k_tilmanschweitzer.csv")
EVAL_FILE = "sudoku_rohanrao9m_10k_madelynredick.csv"
SETTINGS = ("top_prob:5,top_prob_margin:5,top_prob:10,top_prob_margin:10,"
            "top_prob:20,top_prob_margin:20")


def sudoku_base():
  """The data, model size, training and evaluation shared by sudoku_md4 and sudoku_vmd."""
  c = base_config()
  c.data.name = "sudoku"
  c.data.sudoku.train = ",".join(os.path.join(DATA_DIR, f) for f in TRAIN_FILES)
  c.data.sudoku.eval = os.path.join(DATA_DIR, EVAL_FILE)
  c.data.num_eval = 1000               # the first 1,000 puzzles of the eval file
  c.data.sudoku.augment = False        # True: random digit relabelling (more data)

  # CPU size: 0.67M parameters, measured 0.35 s per step at batch 32 on 2 busy
  # CPU cores (width 128 / depth 4: 1.5M parameters, 0.62 s per step). GPU: see
  # the module docstring.
  c.model.width = 96
  c.model.depth = 3
  c.model.num_heads = 4
  c.model.dropout = 0.0
  # Learned absolute positions: with the sinusoid (+ RoPE, both 1-D) the loss
  # stayed at 81 log 9 = 178 nats for 1,200 steps; learned embeddings of the 81
  # cells (free to encode row, column and box) reach 115 nats by step 500.
  c.model.position_embedding = "learned"

  c.diffusion.schedule = "linear"

  c.train.batch_size = 32
  c.train.num_steps = 4000
  c.train.lr = 1e-3
  c.train.warmup_steps = 500
  c.train.weight_decay = 0.01
  c.train.ema_decay = 0.999
  c.train.log_every = 200
  c.train.checkpoint_every = 2000

  c.eval.settings = SETTINGS
  c.eval.temperature = 0.0             # greedy values at the revealed cells (see above)
  c.eval.batch_size = 250
  c.eval.nelbo_samples = 1
  return c


def get_config():
  c = sudoku_base()
  c.model.kind = "md4"
  return c
