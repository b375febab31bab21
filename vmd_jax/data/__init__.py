"""Datasets: a registry from ``config.data.name`` to a dataset and its settings.

Every dataset implements ``base.Dataset``: training batches as a pure function
of (seed, step), the evaluation split, and ``score_samples``, its own measure of
sample quality. ``get_dataset(config.data, seed)`` builds the one a run names.

Add one with ``register("name", "package.module")``. The module defines
  ``default_config() -> ml_collections.ConfigDict``: its settings, which become
    the config group ``config.data.<name>`` (e.g. ``data.sudoku.augment``);
  ``check_config(data_config, in_use: bool)``: raises ValueError naming a bad
    field of that group (``in_use``: the run trains on this dataset);
  ``PATH_FIELDS``: the fields of its group holding local paths (saved absolute
    in a run's config.json; a resumed run may move them);
  ``from_config(data_config, seed) -> Dataset`` and ``render(tokens) -> str``;
and optionally, for ``vmd-jax evaluate --data=FILE`` and ``vmd-jax sample
--puzzles=FILE``:
  ``use_eval_file(data_config, path, needs_train: bool)``: evaluate on ``path``;
  ``prompt_tokens(path, mask_id) -> int32 [R, N]``: x_init rows read from ``path``;
and ``config_shape(data_config) -> (V, N)`` where the config alone fixes them
(``vmd-jax compile`` then reads no data).
The shared fields of ``config.data`` (``name``, ``vocab_size``, ``seq_len``,
``num_eval``) are ``trainer.config``'s.
"""

from __future__ import annotations

import importlib

_MODULES = {
    "synthetic": "vmd_jax.data.synthetic",
    "sudoku": "vmd_jax.data.sudoku",
    "text8": "vmd_jax.data.text8",
}


def register(name: str, module: str) -> None:
  """Makes ``config.data.name = name`` build ``module.from_config(config.data, seed)``,
  with ``module.default_config()`` as ``config.data.<name>``."""
  _MODULES[name] = module


def names() -> tuple[str, ...]:
  return tuple(_MODULES)


def module(name: str):
  """The module registered as ``name`` (imported on first use)."""
  if name not in _MODULES:
    raise ValueError(f"config.data.name = {name!r}; accepted values: {list(_MODULES)}")
  return importlib.import_module(_MODULES[name])


def default_configs() -> dict:
  """{name: its ``config.data.<name>`` group with its defaults} for every dataset."""
  return {name: module(name).default_config() for name in _MODULES}


def check_config(data_config) -> None:
  """Every dataset's ``check_config`` on its group of ``data_config``."""
  for name in _MODULES:
    module(name).check_config(data_config, in_use=name == data_config.name)


def path_fields() -> tuple[str, ...]:
  """Every dataset's path fields as ``"name.field"`` (``config.data.<name>.<field>``)."""
  return tuple(f"{name}.{field}" for name in _MODULES for field in module(name).PATH_FIELDS)


def hook(name: str, attribute: str):
  """Dataset ``name``'s optional ``attribute`` (``use_eval_file``,
  ``prompt_tokens``, ``config_shape``), or None when it has none."""
  return getattr(module(name), attribute, None)


def render(name: str, tokens) -> str:
  """One sample of dataset ``name`` as text: decoded characters, a Sudoku grid,
  or a synthetic sequence's tokens (the module's ``render``)."""
  if name not in _MODULES:
    raise ValueError(f"unknown dataset {name!r}; known: {list(_MODULES)}")
  return module(name).render(tokens)


def get_dataset(data_config, seed: int):
  """The dataset ``data_config.name`` names, built from ``data_config``."""
  return module(data_config.name).from_config(data_config, seed)
