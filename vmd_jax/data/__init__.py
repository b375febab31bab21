"""Datasets: a registry from ``config.data.name`` to a dataset.

Every dataset implements ``base.Dataset``: training batches as a pure function
of (seed, step), the evaluation split, and ``score_samples``, its own measure of
sample quality. ``get_dataset(config.data, seed)`` imports the dataset's module
only when it is used (text8 needs tensorflow-datasets; the others only numpy).

Add one with ``register("name", "package.module")``: the module defines
``from_config(data_config, seed) -> Dataset`` and ``render(tokens) -> str``.
"""

from __future__ import annotations

import importlib

_MODULES = {
    "synthetic": "vmd_jax.data.synthetic",
    "sudoku": "vmd_jax.data.sudoku",
    "text8": "vmd_jax.data.text8",
}


def register(name: str, module: str) -> None:
  """Makes ``config.data.name = name`` build ``module.from_config(config.data, seed)``."""
  _MODULES[name] = module


def names() -> tuple[str, ...]:
  return tuple(_MODULES)


def render(name: str, tokens) -> str:
  """One sample of dataset ``name`` as text: decoded characters, a Sudoku grid,
  or a synthetic sequence's tokens (the module's ``render``)."""
  if name not in _MODULES:
    raise ValueError(f"unknown dataset {name!r}; known: {list(_MODULES)}")
  return importlib.import_module(_MODULES[name]).render(tokens)


def get_dataset(data_config, seed: int):
  """The dataset ``data_config.name`` names, built from ``data_config``."""
  if data_config.name not in _MODULES:
    raise ValueError(f"config.data.name = {data_config.name!r}; accepted values: "
                     f"{list(_MODULES)}")
  return importlib.import_module(_MODULES[data_config.name]).from_config(data_config, seed)
