"""Evaluation: the likelihood bound and sample quality, written to ``eval.json``.

- ``nelbo``: the NELBO over the evaluation split in nats per token and bits per
  token, token-weighted (padding has weight 0), with ``eval.nelbo_samples`` time
  samples per sequence and a standard error over sequences. For VMD the reported
  bound is NELBO(z) + KL, a bound on -log p(x_0) only when the encoder sees x_0
  alone; with ``encoder_sees_xt`` it is reported as ``objective_not_a_bound``.
- ``samples``: for every ``ORDER:NFE`` in ``eval.settings`` (and every prior, for
  VMD with a learned prior), the dataset's own ``score_samples``: synthetic
  data: accuracy, KL(data || samples) and TV; Sudoku: the fraction of puzzles
  solved; text8: a few decoded samples. With a judge (``vmd-jax evaluate
  --judge=WORKDIR``, ``trainer.judge``), also the samples' judge bits per
  character, unigram entropy and repeated 4-gram share, and under ``judge`` the
  same for real windows of the evaluation split (the reference row).

Parameters enter every jitted function as an argument, never as a closed-over
constant, so one compiled program serves any weights, in whatever layout the
trainer gave them (replicated or FSDP-sharded). The NELBO's evaluation batches
are sharded over the mesh's devices: each process builds only its rows of each
batch (the split is divided among processes), and the per-sequence sums come
back replicated, reduced on the host in float64 exactly as on one device. The
batch size is rounded up to a multiple of the device count (the last batch is
padded with weight-0 rows); times are stratified per batch, so the estimate,
not its expectation, depends on that rounded size.
Sampling splits each batch's rows over the mesh's devices when the device count
divides it (``eval.batch_size`` a multiple of the devices; otherwise that batch
runs replicated), each process feeding only its rows; the samples come back
replicated, the same draws as on one device. The learned prior's fit encodes
its sequences the same way.

Command line: ``vmd-jax evaluate --workdir=DIR [--data=FILE] [--settings=...]
[--judge=JUDGE_WORKDIR]``.
"""

from __future__ import annotations

import functools
import math
import os
import posixpath
import re

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from vmd_jax import prior as prior_lib
from vmd_jax.losses import DiagonalGaussian
from vmd_jax.networks import MaskedDiffusion
from vmd_jax.networks.variant import check_variant
from vmd_jax.trainer import config as config_lib
from vmd_jax.trainer import io, sharding
from vmd_jax.trainer.load import BadInput, bad_input


class OutputNotWritten(OSError):
  """``evaluate_workdir`` could not write its output; ``result`` holds what it
  computed, so the caller can still show it."""

  def __init__(self, message: str, result: dict):
    super().__init__(message)
    self.result = result


def check_settings(config, model: MaskedDiffusion, seq_len: int) -> None:
  """Every ORDER:NFE setting fits the model (``check_variant``: with K blocks the
  NFE a multiple of K, each block getting NFE / K steps; GenMD4: ancestral
  only); refused at start, naming the setting."""
  check_variant(model.variant, seq_len=seq_len,
                orders=config_lib.parse_eval_settings(config.eval.settings))


def eval_batch_size(batch_size: int, mesh) -> int:
  """``batch_size`` rounded up to a multiple of the mesh's devices."""
  return -(-batch_size // mesh.size) * mesh.size


def nelbo_metrics(model: MaskedDiffusion, params, dataset, config, key, mesh) -> dict:
  """Token-weighted NELBO (nats and bits per token) and its standard error."""
  sees_xt = model.encoder is not None and model.encoder.sees_xt
  batch_size = eval_batch_size(config.eval.batch_size, mesh)
  data = sharding.batch_sharding(mesh)

  @functools.partial(jax.jit, out_shardings=sharding.replicated(mesh))
  def weighted_sums(params, x0, weight, key):
    """(sum_n values[b, n] * weight[b, n], sum_n weight[b, n]), each [B]: a
    sequence's share of the bound and its tokens."""
    terms = model.loss(params, x0, key)
    values = terms["per_token"]
    if model.encoder is not None:  # + KL / N: the VMD bound
      values = values + terms["kl"][:, None] / x0.shape[1]
    return jnp.sum(values * weight, -1), jnp.sum(weight, -1)

  seq_values, seq_weights = [], []
  rows = sharding.process_rows(data, batch_size)
  for i, local in enumerate(dataset.eval_batches(batch_size, rows=rows)):
    batch = sharding.from_process_rows({k: local[k] for k in ("x0", "weight")}, batch_size,
                                       data)
    acc = np.zeros(batch_size)
    for k in range(config.eval.nelbo_samples):
      key_ik = jax.random.fold_in(key, i * 1000 + k)
      value, weight = weighted_sums(params, batch["x0"], batch["weight"], key_ik)
      acc += np.asarray(value, np.float64)
    seq_values.append(acc / config.eval.nelbo_samples)
    seq_weights.append(np.asarray(weight, np.float64))
  v, w = np.concatenate(seq_values), np.concatenate(seq_weights)
  rate = v.sum() / w.sum()
  stderr = math.sqrt(np.sum(np.square(v - rate * w))) / w.sum()
  name = "objective_not_a_bound" if sees_xt else "nelbo"
  return {f"{name}_nats_per_token": rate, f"{name}_bits_per_token": rate / math.log(2),
          f"{name}_bits_per_token_stderr": stderr / math.log(2),
          "eval_tokens": float(w.sum()), "time_samples_per_sequence": config.eval.nelbo_samples}


def _prior_stamp(config, step: int | None) -> dict:
  """What a fitted prior depends on besides the data: the parameters' step and
  the fit's settings (a resumed run may change both)."""
  p = config.prior
  return {"step": -1 if step is None else int(step), "components": p.components,
          "fit_samples": p.fit_samples, "fit_iters": p.fit_iters, "seed": config.seed}


def _read_prior(path, stamp: dict):
  """The mixture saved at ``path`` if it was fitted for ``stamp``, else None
  (with one warning line when the file holds another fit)."""
  if not path.exists():
    return None
  with path.open("rb") as f, np.load(f) as arrays:
    saved = {k: int(arrays[k]) for k in stamp if k in arrays}
    if saved == stamp:
      return prior_lib.GaussianMixture(
          *(jnp.asarray(arrays[k]) for k in prior_lib.GaussianMixture._fields))
  logging.warning("%s was fitted for %s, not for %s: fitting the prior again", path,
                  saved or "an unrecorded step", stamp)
  return None


def fit_prior(model: MaskedDiffusion, params, dataset, config, workdir, mesh=None,
              save: bool = True, step: int | None = None):
  """The Gaussian-mixture prior of ``vmd_jax.prior``, fitted to q(z | x_0) over
  ``prior.fit_samples`` training sequences of ``dataset`` (None: built from
  ``config``). Read from ``prior.npz`` when that was fitted to the parameters of
  ``step`` with the current ``prior`` settings and seed, else fitted and, with
  ``save``, saved there with that record."""
  path = io.as_path(workdir) / "prior.npz"
  stamp = _prior_stamp(config, step)
  gmm = _read_prior(path, stamp)
  if gmm is not None:
    return gmm
  if dataset is None:
    from vmd_jax.trainer import build
    dataset = build.build_dataset(config)
  x0 = dataset.train_batch(2**31 - 1, config.prior.fit_samples)["x0"]
  mesh = mesh or sharding.data_parallel_mesh()
  encode = jax.jit(lambda params, x: tuple(model.encode_posteriors(params, x)),
                   out_shardings=sharding.replicated(mesh))
  chunks = [encode(params, sharding.split_rows(x0[i:i + 4096], mesh))
            for i in range(0, len(x0), 4096)]
  posterior = DiagonalGaussian(*(jnp.concatenate(parts) for parts in zip(*chunks)))
  gmm = prior_lib.fit_aggregate_posterior_prior(
      posterior, jax.random.key(config.seed + 1), config.prior.components, config.prior.fit_iters)
  if save and jax.process_index() == 0:
    with io.atomic_write_path(path) as tmp, tmp.open("wb") as f:
      np.savez(f, **{k: np.asarray(v) for k, v in gmm._asdict().items()}, **stamp)
  return gmm


def priors(model: MaskedDiffusion, params, dataset, config, workdir, mesh,
           save: bool = True, step: int | None = None) -> dict:
  """{name suffix: prior sampler or None (N(0, I))} for the sample metrics."""
  if model.encoder is None or config.prior.kind != "mixture":
    return {"": None}
  return {"": None, "/mixture": fit_prior(model, params, dataset, config, workdir, mesh,
                                          save, step).sample}


def jit_sampler(model: MaskedDiffusion, config, mesh, prior=None):
  """The jitted sampler of the sample metrics, ``(params, key, x_init, nfe, order)
  -> (samples, network calls)`` (``nfe`` and ``order`` static) with
  ``config.eval``'s temperature, top-p, grid and Prime unit; samples replicated
  on ``mesh``. ``prior``: VMD's latent prior (None: N(0, I))."""
  e = config.eval
  top_p = None if e.top_p >= 1.0 else e.top_p
  unit = {"unit": e.prime_unit} if model.prime_code else {}

  @functools.partial(jax.jit, static_argnums=(3, 4), out_shardings=sharding.replicated(mesh))
  def draw(params, key, x_init, nfe, order):
    return model.sample(params, key, x_init, nfe, order, prior=prior,
                        temperature=e.temperature, top_p=top_p, grid=e.grid, **unit)

  return draw


def sample_metrics(model: MaskedDiffusion, params, dataset, config, key, workdir,
                   mesh, side_files: bool = True, step: int | None = None,
                   judge=None) -> dict:
  """The dataset's ``score_samples`` for every ORDER:NFE setting and prior; with
  ``side_files``, its figures and a fitted prior are written in ``workdir``. With
  a ``trainer.judge.Judge``, each setting's samples also get its ``score`` and
  ``judged_samples`` (their number)."""
  e = config.eval
  results = {}
  for suffix, prior in priors(model, params, dataset, config, workdir, mesh,
                              side_files, step).items():
    draw = jit_sampler(model, config, mesh, prior)
    for order, nfe in config_lib.parse_eval_settings(e.settings):
      name = f"{order}:{nfe}{suffix}"
      key, sub = jax.random.split(key)
      drawn = []

      def bound(k, x, nfe=nfe, order=order, drawn=drawn):
        out = draw(params, k, sharding.split_rows(x, mesh), nfe, order)
        drawn.append(np.asarray(out[0]))
        return out
      figure = f"joint_{name.replace(':', '_').replace('/', '_')}.png"
      figure_path = (io.as_path(workdir) / figure
                     if side_files and jax.process_index() == 0 else None)
      results[name] = dataset.score_samples(bound, sub, e, figure_path=figure_path)
      if judge is not None:
        tokens = np.concatenate(drawn)
        results[name].update(judge.score(tokens), judged_samples=len(tokens))
      logging.info("eval %s: %s", name, {k: v for k, v in results[name].items() if k != "text"})
  return results


def evaluate_run(config, model, dataset, params, workdir, writer=None,
                 output: str | None = "eval.json", mesh=None, step: int | None = None,
                 side_files: bool = True, judge=None) -> dict:
  """Runs every evaluation, writes ``output`` in ``workdir`` (None: not written)
  and returns it. ``mesh``: the devices to use (default: data parallel over every
  device); ``step``: the training step of ``params``, recorded as ``"step"``;
  ``side_files``: also the figures of 2-token joints and a fitted ``prior.npz``
  (False: nothing else in ``workdir`` is written); ``judge``: a
  ``trainer.judge.Judge`` scoring every setting's samples, and under
  ``"judge"`` its workdir, step and ``reference``: its score of real windows of
  the evaluation split (``trainer.judge.reference_windows``: the first 256)."""
  mesh = mesh or sharding.data_parallel_mesh()
  key = jax.random.key(config.seed + 12345)
  k_nelbo, k_samples = jax.random.split(key)
  result = {"model": config.model.kind, "data": config.data.name, "step": step,
            "nelbo": nelbo_metrics(model, params, dataset, config, k_nelbo, mesh),
            "samples": sample_metrics(model, params, dataset, config, k_samples, workdir,
                                      mesh, side_files, step, judge)}
  if judge is not None:
    from vmd_jax.trainer.judge import reference_windows
    real = reference_windows(dataset)
    result["judge"] = {"workdir": judge.workdir, "step": judge.step,
                       "reference": {**judge.score(real), "judged_samples": len(real)}}
  schedule = {k: float(v) for k, v in model.schedule_metrics(params).items()}
  if schedule:  # GenMD4: the learned exponent of every token value
    result["schedule"] = schedule
  if jax.process_index() == 0:
    if output is not None:
      io.write_json(io.as_path(workdir) / output, result)
    if writer is not None:
      scalars = {f"eval/{k}": v for k, v in result["nelbo"].items()}
      texts = {}
      for name, metrics in result["samples"].items():
        scalars.update({f"eval/{name}/{k}": v for k, v in metrics.items()
                        if isinstance(v, (int, float))})
        texts.update({f"eval/{name}/{k}": samples_markdown(v) for k, v in metrics.items()
                      if isinstance(v, list) and v and isinstance(v[0], str)})
      at = config.train.num_steps if step is None else step
      writer.write_scalars(at, scalars)
      writer.write_texts(at, texts)
  return result


def samples_markdown(samples: list[str]) -> str:
  """Decoded samples as one Markdown code block (TensorBoard's text plugin renders
  Markdown; a code block keeps every space)."""
  return "\n".join("    " + line for line in samples)


def check_writable(path) -> None:
  """Raises ``BadInput`` naming ``path`` when a file cannot be written there: its
  directory is missing or not writable, or ``path`` is a directory (local paths;
  a URL is not checked)."""
  if "://" in os.fspath(path):
    return
  parent = path.parent
  if not parent.is_dir():
    raise BadInput(f"cannot write the output {path}: no directory {parent}")
  if path.is_dir():
    raise BadInput(f"cannot write the output {path}: it is a directory")
  if not os.access(parent, os.W_OK | os.X_OK):
    raise BadInput(f"cannot write the output {path}: {parent} is not writable")


def evaluation_dataset(config, workdir, data: str | None, settings: str | None,
                       vocab_size: int, seq_len: int):
  """The dataset ``evaluate_workdir`` evaluates on, ``config`` set to match: the
  run's, or with ``data`` that file (the dataset's ``use_eval_file``: a Sudoku
  CSV, read alone unless a mixture prior must be fitted on the training files;
  a .npy table, V and N from its shape). Raises ``BadInput`` for a file or
  setting the run cannot use."""
  from etils import epath

  from vmd_jax import data as data_registry
  from vmd_jax.trainer import build
  with bad_input():  # a malformed file (SudokuDataError, a bad table) or setting
    if data:
      if not epath.Path(data).exists():
        raise FileNotFoundError(f"evaluation data not found: {data}")
      use_eval_file = data_registry.hook(config.data.name, "use_eval_file")
      if use_eval_file is None:
        takes = [n for n in data_registry.names() if data_registry.hook(n, "use_eval_file")]
        raise BadInput(f"--data takes a file for a run on {takes} data, not for a "
                       f"{config.data.name!r} run")
      # A mixture prior may be fitted again (prior.npz absent, or of another step or
      # settings): on the training files, never on the evaluation data.
      use_eval_file(config.data, data,
                    needs_train=config.model.kind == "vmd" and config.prior.kind == "mixture")
    if settings:
      config.eval.settings = settings
    config_lib.validate(config)
    dataset = build.build_dataset(config)
  if dataset.vocab_size != vocab_size:
    raise BadInput(f"{data}: a vocabulary of {dataset.vocab_size} tokens, but the model "
                   f"in {workdir} was trained on {vocab_size}")
  if dataset.seq_len != seq_len:
    raise BadInput(f"{data}: sequences of {dataset.seq_len} tokens, but the model in "
                   f"{workdir} was trained on {seq_len}")
  return dataset


def default_output(data: str | None, settings: str | None, judge: str | None) -> str:
  """``eval_<what>.json`` for what a re-evaluation changed: the ``data`` file's
  stem, the settings (``top_prob:5,random:4`` -> ``top_prob_5_random_4``),
  ``judged``; ``eval_latest.json`` for none. Never ``eval.json``, which holds the
  training's own final evaluation."""
  from etils import epath
  parts = [epath.Path(data).stem] if data else []
  if settings:
    parts.append(re.sub(r"[^\w]+", "_", settings).strip("_"))
  if judge:
    parts.append("judged")
  return f"eval_{'_'.join(parts) or 'latest'}.json"


def evaluate_workdir(workdir, data: str | None = None, settings: str | None = None,
                     output: str | None = None, judge: str | None = None) -> dict:
  """Evaluates the EMA weights of the newest intact checkpoint of a trained
  ``workdir`` (``load.load``: a newer step that is unreadable or not finite is
  skipped with one warning line and left in place; nothing in the workdir but
  ``output`` is written, so a training run may hold it meanwhile: no figures, and
  a mixture prior missing from ``prior.npz`` is fitted but not saved).

  ``data``: another evaluation file (a Sudoku CSV, or a .npy probability table);
  ``settings``: ORDER:NFE pairs replacing ``eval.settings``; ``judge``: the
  workdir of an AR judge (``configs/text8_judge.py``, checked against the run by
  ``trainer.judge.open_judge``) scoring the samples. Writes ``output`` (default
  ``default_output(...)``: never the training's ``eval.json``).

  Every argument is checked before the checkpoint is read (``BadInput`` names the
  one the run cannot use, and an output that cannot be written); a write that
  still fails raises ``OutputNotWritten`` holding the result.
  """
  from vmd_jax.trainer.load import open_run, restore_ema

  if settings:
    with bad_input(f"--settings={settings}: "):
      config_lib.parse_eval_settings(settings)
  if output is None:
    output = default_output(data, settings, judge)
  inside = posixpath.normpath(output)  # a name relative to the workdir (local or gs://)
  if posixpath.isabs(output) or "://" in output or inside == ".." or inside.startswith("../"):
    raise BadInput(f"--output={output} leaves the workdir {workdir}; name a file inside it")
  path = io.as_path(workdir) / output
  check_writable(path)
  run = open_run(workdir)
  if judge:
    from vmd_jax.trainer.judge import load_judge, open_judge
    open_judge(judge, run.config, run.vocab_size, run.seq_len)  # before any data is read
  dataset = evaluation_dataset(run.config, workdir, data, settings, run.vocab_size,
                               run.seq_len)
  with bad_input():
    check_settings(run.config, run.model, dataset.seq_len)
  params, step = restore_ema(workdir, run)
  judge_run = load_judge(judge, run.config, run.vocab_size, run.seq_len) if judge else None
  result = evaluate_run(run.config, run.model, dataset, params, workdir, output=None,
                        step=step, side_files=False, judge=judge_run)
  if jax.process_index() == 0:
    try:
      io.write_json(path, result)
    except OSError as e:
      raise OutputNotWritten(f"could not write {path}: {e.strerror or e}", result) from None
  return result
