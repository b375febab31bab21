"""Sudoku puzzles and solutions from CSV files, and the solved-puzzle metric.

File format: one header line, ``quizzes,solutions``
or ``puzzle,solution``, then one row per puzzle, ``<puzzle>,<solution>``, LF or
CRLF line endings. Each field is 81 characters, the grid row-major. Puzzle
cells are ``1``-``9`` (a given) or ``0``/``.`` (empty); solution cells are ``1``-``9``.
Every row is validated (the solution is a valid Sudoku, the givens agree with
it); any problem raises ``SudokuDataError`` naming the file and the 1-based line.
Parsing 10,000 rows takes a fraction of a second, so nothing is cached.

Tokens: digit d in 1..9 -> token d-1; vocab_size = 9, the mask id is 9, seq_len = 81.
"""

from __future__ import annotations

import os
from typing import Iterator, NamedTuple, Sequence

import ml_collections
import numpy as np
from etils import epath

from vmd_jax.data import base

VOCAB_SIZE = 9
MASK_ID = VOCAB_SIZE
SEQ_LEN = 81
HEADERS = ("quizzes,solutions", "puzzle,solution")


class SudokuDataError(ValueError):
  """A malformed Sudoku CSV; the message names the file and the 1-based line."""


class SudokuGrids(NamedTuple):
  """Digits of one file: ``puzzles`` uint8 [R, 81] (0 = empty) and
  ``solutions`` uint8 [R, 81] (1..9)."""
  puzzles: np.ndarray
  solutions: np.ndarray


def _units(grids: np.ndarray) -> dict[str, np.ndarray]:
  """The 9 rows, 9 columns and 9 boxes of grids [B, 81], each [B, 9 units, 9 cells]."""
  g = grids.reshape(-1, 9, 9)
  boxes = g.reshape(-1, 3, 3, 3, 3).transpose(0, 1, 3, 2, 4).reshape(-1, 9, 9)
  return {"row": g, "column": g.transpose(0, 2, 1), "box": boxes}


def _unit_errors(grids: np.ndarray, first: int) -> dict[str, np.ndarray]:
  """Per unit kind, bool [B, 9]: the unit does not hold ``first``..``first+8`` once each."""
  expected = np.arange(first, first + 9)
  return {kind: np.any(np.sort(unit, axis=-1) != expected, axis=-1)
          for kind, unit in _units(grids).items()}


def _read_lines(path: epath.Path) -> list[str]:
  if not path.is_file():
    raise FileNotFoundError(f"Sudoku file not found: {path} (get the public puzzles with "
                            "`bash launch/get_sudoku.sh DIR`, or point config.data."
                            "sudoku.train / sudoku.eval at your CSV files)")
  data = path.read_bytes()
  try:
    text = data.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    line = data[:e.start].count(b"\n") + 1
    raise SudokuDataError(f"{path}:{line}: not UTF-8 text ({e.reason})") from e
  lines = [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
  while lines and not lines[-1].strip():
    lines.pop()
  return lines


def _check_chars(codes: np.ndarray, allowed: np.ndarray, path: epath.Path, what: str, accepted: str):
  """codes uint32 [R, 81] code points; raises at the first one not in ``allowed``."""
  bad = ~np.isin(codes, allowed)
  if bad.any():
    row, col = np.argwhere(bad)[0]
    raise SudokuDataError(f"{path}:{row + 2}: {what} cell {col + 1} is {chr(codes[row, col])!r}; "
                          f"accepted: {accepted}")


def load_sudoku_csv(path: str | os.PathLike) -> SudokuGrids:
  """Parses and validates one CSV file (format in the module docstring); local or
  ``gs://``."""
  path = epath.Path(path)
  lines = _read_lines(path)
  if not lines:
    raise SudokuDataError(f"{path}:1: empty file; expected a header, one of {list(HEADERS)}")
  header = lines[0].strip()
  if header not in HEADERS:
    raise SudokuDataError(f"{path}:1: unknown header {header!r}; expected one of {list(HEADERS)}")
  if len(lines) == 1:
    raise SudokuDataError(f"{path}: no puzzles after the header")
  puzzles, solutions = [], []
  for lineno, line in enumerate(lines[1:], start=2):
    fields = line.split(",")
    if len(fields) != 2:
      raise SudokuDataError(f"{path}:{lineno}: expected 2 comma-separated fields "
                            f"(puzzle,solution), got {len(fields)}")
    for what, field in zip(("puzzle", "solution"), fields):
      if len(field) != SEQ_LEN:
        raise SudokuDataError(f"{path}:{lineno}: {what} has {len(field)} characters, "
                              f"expected {SEQ_LEN}")
    puzzles.append(fields[0])
    solutions.append(fields[1])
  # One code point per cell (UTF-32 keeps any non-ASCII character a single cell).
  as_codes = lambda fields: np.frombuffer("".join(fields).encode("utf-32-le"),
                                          np.uint32).reshape(-1, SEQ_LEN)
  puzzle_codes, solution_codes = as_codes(puzzles), as_codes(solutions)
  _check_chars(puzzle_codes, np.array([ord(c) for c in "0123456789."]), path, "puzzle",
               "0-9 or '.'")
  _check_chars(solution_codes, np.array([ord(c) for c in "123456789"]), path, "solution", "1-9")
  puzzle_digits = np.where(puzzle_codes == ord("."), 0, puzzle_codes - ord("0")).astype(np.uint8)
  solution_digits = (solution_codes - ord("0")).astype(np.uint8)

  for kind, bad in _unit_errors(solution_digits, first=1).items():
    if bad.any():
      row, unit = np.argwhere(bad)[0]
      raise SudokuDataError(f"{path}:{row + 2}: solution is not a valid Sudoku: {kind} "
                            f"{unit + 1} does not hold 1-9 once each")
  disagree = (puzzle_digits != 0) & (puzzle_digits != solution_digits)
  if disagree.any():
    row, cell = np.argwhere(disagree)[0]
    raise SudokuDataError(
        f"{path}:{row + 2}: puzzle gives {puzzle_digits[row, cell]} at row {cell // 9 + 1}, "
        f"column {cell % 9 + 1}, but the solution has {solution_digits[row, cell]}")
  return SudokuGrids(puzzle_digits, solution_digits)


def sudoku_solved(samples, reference, given) -> np.ndarray:
  """bool [B]: each sample grid is a valid Sudoku and agrees with every given.

  Args:
    samples: int tokens [B, 81] (0..8; a leftover mask id 9 fails).
    reference: int tokens [B, 81] holding the givens' values at given positions
      (the solution or the puzzle's tokens; other positions are ignored).
    given: bool [B, 81], the given positions.
  """
  samples, reference, given = (np.asarray(a) for a in (samples, reference, given))
  if samples.shape[-1] != SEQ_LEN or samples.ndim != 2:
    raise ValueError(f"samples must be [B, {SEQ_LEN}], got shape {samples.shape}")
  valid = ~np.any(np.stack([bad.any(-1) for bad in _unit_errors(samples, first=0).values()]), 0)
  agrees = np.all(~given.astype(bool) | (samples == reference), axis=-1)
  return valid & agrees


def sudoku_accuracy(samples, reference, given, weight=None) -> float:
  """Fraction of puzzles solved, over rows whose weight [B, 81] is not all 0 (padding)."""
  solved = sudoku_solved(samples, reference, given)
  rows = np.ones(len(solved)) if weight is None else np.max(np.asarray(weight), axis=-1) > 0
  return float(np.sum(solved * rows) / max(np.sum(rows), 1))


class SudokuDataset(base.Dataset):
  """Solutions as x0 with the puzzles' givens, from Sudoku CSV files.

  Training rows are drawn uniformly with replacement from all ``train_paths``
  with ``base.rng_for_step(seed, step)``. With ``augment``, each drawn row gets
  its own random relabelling of the digits (a permutation of 1-9), drawn from the
  same generator, applied to solution and givens alike: it maps valid grids to
  valid grids. Evaluation is the first ``num_eval`` rows of ``eval_path``
  (None: all), never augmented.

  Batches: "x0" int32 [B, 81] solution tokens; "given" bool [B, 81];
  eval batches add "weight" float32 [B, 81] (0 on padding rows).
  """

  vocab_size = VOCAB_SIZE
  seq_len = SEQ_LEN

  def __init__(self, train_paths: Sequence[str | os.PathLike], eval_path: str | os.PathLike,
               seed: int = 0, num_eval: int | None = None, augment: bool = False):
    if isinstance(train_paths, (str, os.PathLike)):
      train_paths = [train_paths]
    if not train_paths:
      raise ValueError("train_paths is empty; give at least one Sudoku CSV file")
    train = [load_sudoku_csv(p) for p in train_paths]
    self.train_x0 = np.concatenate([g.solutions for g in train]).astype(np.int32) - 1
    self.train_given = np.concatenate([g.puzzles for g in train]) != 0
    held_out = load_sudoku_csv(eval_path)
    if num_eval is not None and not 1 <= num_eval <= len(held_out.puzzles):
      raise ValueError(f"num_eval must be in [1, {len(held_out.puzzles)}] for {eval_path}, "
                       f"got {num_eval}")
    self.eval_x0 = held_out.solutions[:num_eval].astype(np.int32) - 1
    self.eval_given = held_out.puzzles[:num_eval] != 0
    self.seed, self.augment = seed, augment

  def train_batch(self, step: int, batch_size: int, rows: slice | None = None) -> base.Batch:
    """{"x0": int32 [B, 81], "given": bool [B, 81]}, a pure function of (seed, step);
    with ``rows``, those rows of it."""
    rows = base.row_range(rows, batch_size)
    rng = base.rng_for_step(self.seed, step)
    picked = rng.integers(0, len(self.train_x0), size=batch_size)[rows]
    x0 = self.train_x0[picked]
    if self.augment:
      identity = np.tile(np.arange(VOCAB_SIZE, dtype=np.int32), (batch_size, 1))
      relabel = rng.permuted(identity, axis=1)[rows]  # row b: token v -> relabel[b, v]
      x0 = np.take_along_axis(relabel, x0, axis=1)
    return {"x0": x0, "given": self.train_given[picked]}

  def eval_batches(self, batch_size: int, rows: slice | None = None) -> Iterator[base.Batch]:
    """The evaluation rows in file order; the last batch is padded with weight-0 rows;
    with ``rows``, those rows of each batch."""
    rows = base.row_range(rows, batch_size)
    for start in range(0, len(self.eval_x0), batch_size):
      x0 = self.eval_x0[start:start + batch_size]
      given = self.eval_given[start:start + batch_size]
      pad = batch_size - len(x0)
      weight = np.ones((batch_size, SEQ_LEN), np.float32)
      weight[len(x0):] = 0.0
      yield {"x0": np.concatenate([x0, np.zeros((pad, SEQ_LEN), np.int32)])[rows],
             "given": np.concatenate([given, np.zeros((pad, SEQ_LEN), bool)])[rows],
             "weight": weight[rows]}

  def score_samples(self, draw, key, eval_config, figure_path=None) -> dict:
    """The fraction of evaluation puzzles solved (``sudoku_accuracy``) from their
    givens, with the empty cells masked."""
    import jax
    solved, total, calls = 0.0, 0.0, []
    for i, batch in enumerate(self.eval_batches(eval_config.batch_size)):
      x_init = np.where(batch["given"], batch["x0"], VOCAB_SIZE).astype(np.int32)
      x, n = draw(jax.random.fold_in(key, i), x_init)
      real = batch["weight"].max(-1) > 0
      solved += sudoku_accuracy(np.asarray(x), batch["x0"], batch["given"],
                                batch["weight"]) * real.sum()
      total += real.sum()
      calls.append(int(n))
    return {"accuracy": solved / total, "num_puzzles": int(total), "nfe": max(calls)}


# The fields of ``config.data.sudoku`` that hold local paths (``train``: comma-separated).
PATH_FIELDS = ("train", "eval")


def default_config() -> ml_collections.ConfigDict:
  """``config.data.sudoku``: the CSV files and the training augmentation."""
  c = ml_collections.ConfigDict()
  c.train = ""         # comma-separated CSV paths
  c.eval = ""          # one CSV path
  c.augment = False    # random digit relabelling of each grid
  return c


def check_config(data_config, in_use: bool) -> None:
  """A Sudoku run needs both CSV fields."""
  s = data_config.sudoku
  if in_use and not (s.train and s.eval):
    raise ValueError("config.data.name = 'sudoku' needs config.data.sudoku.train and "
                     "config.data.sudoku.eval (CSV paths)")


def from_config(data_config, seed: int) -> SudokuDataset:
  """The registry entry: ``data.sudoku.train`` (comma-separated CSV paths),
  ``data.sudoku.eval``, ``data.num_eval`` (0: all rows), ``data.sudoku.augment``."""
  s = data_config.sudoku
  train = [p.strip() for p in s.train.split(",") if p.strip()]
  return SudokuDataset(train, s.eval, seed=seed, num_eval=data_config.num_eval or None,
                       augment=s.augment)


def use_eval_file(data_config, path: str, needs_train: bool) -> None:
  """Points ``data_config`` at the CSV ``path`` for evaluation: its rows (the
  run's ``num_eval``, e.g. 1000, caps them, but a smaller file is read whole),
  and, unless ``needs_train`` (a prior fitted on the training files), as the
  training files too, so that only ``path`` is read."""
  data_config.sudoku.eval = path
  if data_config.num_eval:
    data_config.num_eval = min(data_config.num_eval, len(load_sudoku_csv(path).puzzles))
  if not needs_train:
    data_config.sudoku.train = path


def prompt_tokens(path: str, mask_id: int) -> np.ndarray:
  """int32 [R, 81]: the givens of each of the R puzzles of the CSV ``path`` as
  tokens, ``mask_id`` elsewhere; ``SudokuDataError`` for a malformed file."""
  puzzles = load_sudoku_csv(path).puzzles
  return np.where(puzzles != 0, puzzles.astype(np.int32) - 1, mask_id).astype(np.int32)


def render(tokens) -> str:
  """A grid of 81 tokens (0..8, mask 9) as nine lines of digits, ``.`` for a mask."""
  digits = ["." if v == VOCAB_SIZE else str(int(v) + 1) for v in np.asarray(tokens).ravel()]
  rows = [" ".join("".join(digits[r * 9 + c:r * 9 + c + 3]) for c in (0, 3, 6))
          for r in range(9)]
  return "\n".join(rows)
