"""Sudoku CSVs: real puzzles, every kind of bad row, the dataset and the metric.

The fixtures in tests/data/sudoku are the first 300 rows of three public files
(tests/data/sudoku/README.md); the full files come from launch/get_sudoku.sh.
"""

import time
from pathlib import Path

import numpy as np
import pytest

from vmd_jax.data import sudoku
from vmd_jax.data.sudoku import (SudokuDataError, SudokuDataset, load_sudoku_csv, sudoku_accuracy,
                                 sudoku_solved)

DATA = Path(__file__).resolve().parent / "data" / "sudoku"
ROWS = 300
FILES = ["sudoku_kaggle1m_10k_jerod92.csv", "sudoku_rohanrao9m_10k_tilmanschweitzer.csv",
         "sudoku_rohanrao9m_10k_madelynredick.csv"]


@pytest.fixture(scope="module")
def real_grids():
  missing = [f for f in FILES if not (DATA / f).is_file()]
  assert not missing, f"Sudoku fixtures missing under {DATA}: {missing}"
  start = time.perf_counter()
  grids = {f: load_sudoku_csv(DATA / f) for f in FILES}
  return grids, time.perf_counter() - start


@pytest.fixture(scope="module")
def rows():
  """The first 3 data lines of a real file, as (puzzle, solution) strings."""
  lines = (DATA / FILES[1]).read_text().splitlines()[1:4]
  return [tuple(line.split(",")) for line in lines]


def write_csv(path, rows, header="puzzle,solution", newline="\n"):
  path.write_bytes((newline.join([header] + [",".join(r) for r in rows]) + newline).encode())
  return path


def test_real_files_parse_and_are_solved(real_grids):
  grids, seconds = real_grids
  assert seconds < 5.0, f"parsing 900 rows took {seconds:.2f} s"
  for name, g in grids.items():
    assert g.puzzles.shape == g.solutions.shape == (ROWS, 81), name
    given = g.puzzles != 0
    solved = sudoku_solved(g.solutions.astype(np.int32) - 1, g.puzzles.astype(np.int32) - 1, given)
    assert solved.all(), name
    assert 17 <= given.sum(1).min() and given.sum(1).max() < 81
  jerod_givens = (grids[FILES[0]].puzzles != 0).sum(1)
  assert 30 <= jerod_givens.min() and jerod_givens.max() <= 36  # the source says 30-36
  # The first row of the tilmanschweitzer file, read by eye.
  first = grids[FILES[1]]
  assert "".join(map(str, first.puzzles[0, :9])) == "070000043"
  assert "".join(map(str, first.solutions[0, :9])) == "679518243"


def test_corrupted_grids_fail(real_grids):
  g = real_grids[0][FILES[0]]
  solution = g.solutions[:50].astype(np.int32) - 1
  given = g.puzzles[:50] != 0
  swapped = solution.copy()
  swapped[:, [3, 4]] = swapped[:, [4, 3]]  # two cells of row 1 (always different digits)
  relabelled = (solution + 1) % 9  # a valid grid that contradicts every given
  masked = solution.copy()
  masked[:, 40] = sudoku.MASK_ID
  assert sudoku_solved(solution, solution, given).all()
  assert not sudoku_solved(swapped, solution, given).any()
  assert not sudoku_solved(relabelled, solution, given).any()
  assert sudoku_solved(relabelled, relabelled, given).all()
  assert not sudoku_solved(masked, solution, np.zeros_like(given)).any()


def test_crlf_dots_and_both_headers(tmp_path, rows):
  expected = load_sudoku_csv(write_csv(tmp_path / "lf.csv", rows))
  dotted = [(p.replace("0", "."), s) for p, s in rows]
  for path in [write_csv(tmp_path / "crlf.csv", rows, newline="\r\n"),
               write_csv(tmp_path / "quizzes.csv", rows, header="quizzes,solutions"),
               write_csv(tmp_path / "crlf_quizzes.csv", rows, "quizzes,solutions", "\r\n"),
               write_csv(tmp_path / "dots.csv", dotted)]:
    got = load_sudoku_csv(path)
    np.testing.assert_array_equal(got.puzzles, expected.puzzles)
    np.testing.assert_array_equal(got.solutions, expected.solutions)
  assert expected.puzzles.shape == (3, 81) and expected.puzzles.dtype == np.uint8
  (tmp_path / "no_final_newline.csv").write_text("puzzle,solution\n" + ",".join(rows[0]))
  assert len(load_sudoku_csv(tmp_path / "no_final_newline.csv").puzzles) == 1


def _set(s, i, c):
  return s[:i] + c + s[i + 1:]


def _first_given(p):
  return next(i for i, c in enumerate(p) if c != "0")


# Row r is 1..9 shifted by r: every row and column holds 1-9, box 1 does not.
LATIN_NOT_SUDOKU = "".join(str((c + r) % 9 + 1) for r in range(9) for c in range(9))

# (how to break the second data row, line 3 of the file; expected message fragment)
BAD_ROWS = [
    (lambda p, s: p + "," + s + ",extra", "expected 2 comma-separated fields (puzzle,solution), "
                                          "got 3"),
    (lambda p, s: p, "got 1"),
    (lambda p, s: p[:80] + "," + s, "puzzle has 80 characters"),
    (lambda p, s: p + "," + s + "9", "solution has 82 characters"),
    (lambda p, s: _set(p, 5, "x") + "," + s, "puzzle cell 6 is 'x'"),
    (lambda p, s: _set(p, 7, "\u00e9") + "," + s, "puzzle cell 8 is '\u00e9'"),
    (lambda p, s: p + "," + _set(s, 80, "0"), "solution cell 81 is '0'"),
    (lambda p, s: p + "," + _set(s, 0, s[1]), "not a valid Sudoku: row 1 "),
    (lambda p, s: p + "," + s[1] + s[0] + s[2:], "not a valid Sudoku: column 1 "),
    (lambda p, s: "0" * 81 + "," + LATIN_NOT_SUDOKU, "not a valid Sudoku: box 1 "),
    (lambda p, s: _set(p, _first_given(p), str(int(s[_first_given(p)]) % 9 + 1)) + "," + s,
     "puzzle gives"),
]


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
@pytest.mark.parametrize("corrupt,fragment", BAD_ROWS)
def test_bad_rows_name_file_and_line(tmp_path, rows, corrupt, fragment, newline):
  lines = [",".join(rows[0]), corrupt(*rows[1]), ",".join(rows[2])]
  path = tmp_path / "broken_file.csv"
  path.write_bytes(("puzzle,solution" + newline + newline.join(lines) + newline).encode())
  with pytest.raises(SudokuDataError) as info:
    load_sudoku_csv(path)
  message = str(info.value)
  assert "broken_file.csv:3:" in message and fragment in message, message
  assert isinstance(info.value, ValueError)


def test_header_and_file_errors(tmp_path, rows):
  path = write_csv(tmp_path / "odd_header.csv", rows, header="grid,answer")
  with pytest.raises(SudokuDataError, match=r"odd_header.csv:1: unknown header 'grid,answer'"):
    load_sudoku_csv(path)
  (tmp_path / "empty.csv").write_text("")
  with pytest.raises(SudokuDataError, match="empty.csv:1: empty file"):
    load_sudoku_csv(tmp_path / "empty.csv")
  (tmp_path / "header_only.csv").write_text("puzzle,solution\n")
  with pytest.raises(SudokuDataError, match="header_only.csv: no puzzles"):
    load_sudoku_csv(tmp_path / "header_only.csv")
  with pytest.raises(FileNotFoundError, match="missing_file.csv"):
    load_sudoku_csv(tmp_path / "missing_file.csv")
  (tmp_path / "latin1.csv").write_bytes(b"puzzle,solution\n\xe9\n")
  with pytest.raises(SudokuDataError, match="latin1.csv:2: not UTF-8"):
    load_sudoku_csv(tmp_path / "latin1.csv")
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      "empty.csv", "header_only.csv", "latin1.csv", "odd_header.csv"]  # nothing written


@pytest.fixture(scope="module")
def dataset():
  return SudokuDataset([DATA / FILES[0], DATA / FILES[1]], DATA / FILES[2], seed=3, num_eval=250)


def test_train_batches(dataset):
  assert (dataset.vocab_size, dataset.seq_len, sudoku.MASK_ID) == (9, 81, 9)
  assert len(dataset.train_x0) == 2 * ROWS
  batch = dataset.train_batch(11, 32)
  assert batch["x0"].shape == (32, 81) and batch["x0"].dtype == np.int32
  assert batch["given"].shape == (32, 81) and batch["given"].dtype == bool
  assert batch["x0"].min() == 0 and batch["x0"].max() == 8
  again = SudokuDataset([DATA / FILES[0], DATA / FILES[1]], DATA / FILES[2], seed=3,
                        num_eval=1).train_batch(11, 32)
  for key in batch:
    np.testing.assert_array_equal(batch[key], again[key])
  assert not np.array_equal(batch["x0"], dataset.train_batch(12, 32)["x0"])
  assert sudoku_solved(batch["x0"], batch["x0"], batch["given"]).all()


def test_augmentation_relabels_consistently():
  plain = SudokuDataset([DATA / FILES[0]], DATA / FILES[1], seed=5, num_eval=1)
  augmented = SudokuDataset([DATA / FILES[0]], DATA / FILES[1], seed=5, num_eval=1, augment=True)
  for step in range(3):
    base, aug = plain.train_batch(step, 256), augmented.train_batch(step, 256)
    np.testing.assert_array_equal(aug["given"], base["given"])  # the same rows
    assert sudoku_solved(aug["x0"], aug["x0"], aug["given"]).all()
    # Each row is base relabelled by one bijection of the tokens (a valid grid holds
    # every token 9 times, so row-wise maps token -> token determine it).
    relabel = np.zeros((256, 9), np.int32)
    np.put_along_axis(relabel, base["x0"], aug["x0"], axis=1)
    np.testing.assert_array_equal(np.take_along_axis(relabel, base["x0"], axis=1), aug["x0"])
    assert all(sorted(r) == list(range(9)) for r in relabel.tolist())
    assert np.mean(np.all(relabel == np.arange(9), axis=1)) < 0.01  # identity is rare (1/9!)


def test_eval_batches_and_accuracy(dataset, real_grids):
  batches = list(dataset.eval_batches(100))
  assert len(batches) == 3
  for b in batches:
    assert b["x0"].shape == b["given"].shape == b["weight"].shape == (100, 81)
    assert b["weight"].dtype == np.float32 and b["given"].dtype == bool
  np.testing.assert_array_equal(batches[2]["weight"][:50], 1.0)
  np.testing.assert_array_equal(batches[2]["weight"][50:], 0.0)
  held_out = real_grids[0][FILES[2]]
  x0 = np.concatenate([b["x0"] for b in batches])[:250]
  np.testing.assert_array_equal(x0, held_out.solutions[:250].astype(np.int32) - 1)
  # Padding rows (all zeros: not a valid grid) do not count.
  assert sudoku_accuracy(batches[2]["x0"], batches[2]["x0"], batches[2]["given"],
                         batches[2]["weight"]) == 1.0
  broken = batches[2]["x0"].copy()
  broken[:10, [0, 1]] = broken[:10, [1, 0]]
  assert sudoku_accuracy(broken, batches[2]["x0"], batches[2]["given"],
                         batches[2]["weight"]) == pytest.approx(40 / 50)
  assert sudoku_accuracy(broken, batches[2]["x0"], batches[2]["given"]) == pytest.approx(40 / 100)
  with pytest.raises(ValueError, match=r"num_eval must be in \[1, 300\]"):
    SudokuDataset([DATA / FILES[0]], DATA / FILES[1], num_eval=ROWS + 1)
