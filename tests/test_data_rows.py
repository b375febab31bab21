"""Per-process rows of a global batch: the union of the row ranges is the global batch,
for every dataset, training and evaluation alike."""

import pathlib

import numpy as np
import pytest

from vmd_jax.data import base, sudoku, synthetic, text8, text_sources
from vmd_jax.data import text_normalize as tn

DATA = pathlib.Path(__file__).parent / "data"
SUDOKU = DATA / "sudoku" / "sudoku_kaggle1m_10k_jerod92.csv"
TEXT = DATA / "text8" / "sqlite3_h_comments.txt"
CUTS = (0, 3, 8, 13, 20)  # four "processes" of unequal shares of 20 rows


def datasets():
  tokens = tn.encode(text_sources.read_local_text(TEXT))
  return {
      "synthetic": synthetic.get_synthetic("d2", seed=3, num_eval=50),
      "sudoku": sudoku.SudokuDataset([SUDOKU], SUDOKU, seed=3, num_eval=45),
      "sudoku_augmented": sudoku.SudokuDataset([SUDOKU], SUDOKU, seed=3, num_eval=45,
                                               augment=True),
      "text8": text8.Text8Dataset.from_tokens(tokens, seq_len=32, seed=3),
  }


@pytest.fixture(scope="module", params=list(datasets()))
def dataset(request):
  return datasets()[request.param]


def joined(parts):
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def test_train_rows_union_is_the_global_batch(dataset):
  for step in (0, 7):
    whole = dataset.train_batch(step, 20)
    parts = [dataset.train_batch(step, 20, rows=slice(lo, hi))
             for lo, hi in zip(CUTS[:-1], CUTS[1:])]
    assert [len(p["x0"]) for p in parts] == [3, 5, 5, 7]
    union = joined(parts)
    assert set(union) == set(whole)
    for k in whole:
      np.testing.assert_array_equal(union[k], whole[k])
  # and the rows are a real sample, not a constant: steps differ
  assert not np.array_equal(dataset.train_batch(0, 20)["x0"], dataset.train_batch(1, 20)["x0"])


def test_eval_rows_union_is_the_global_batch(dataset):
  whole = list(dataset.eval_batches(20))
  per_process = [list(dataset.eval_batches(20, rows=slice(lo, hi)))
                 for lo, hi in zip(CUTS[:-1], CUTS[1:])]
  assert all(len(p) == len(whole) for p in per_process)  # every process sees every batch
  for b, batch in enumerate(whole):
    union = joined([p[b] for p in per_process])
    for k in batch:
      np.testing.assert_array_equal(union[k], batch[k])
  assert whole[-1]["weight"].max(-1).min() == 0  # a padded last batch is split too


@pytest.mark.parametrize("rows", [slice(0, 21), slice(-1, 5), slice(0, 10, 2), slice(5, 3)])
def test_bad_row_ranges_are_refused(rows):
  with pytest.raises(ValueError, match="not a contiguous range of a batch of 20 rows"):
    base.row_range(rows, 20)
  with pytest.raises(ValueError, match="not a contiguous range"):
    synthetic.get_synthetic("d1").train_batch(0, 20, rows=rows)
