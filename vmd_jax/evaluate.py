"""Evaluation: the likelihood bound and sample quality, written to ``eval.json``.

- ``nelbo``: the NELBO over the evaluation split in nats per token and bits per
  token, token-weighted (padding has weight 0), with ``eval.nelbo_samples`` time
  samples per sequence and a standard error over sequences. For VMD the reported
  bound is NELBO(z) + KL, a bound on -log p(x_0) only when the encoder sees x_0
  alone; with ``encoder_sees_xt`` it is reported as ``objective_not_a_bound``.
- ``samples``: for every ``ORDER:NFE`` in ``eval.settings`` (and every prior, for
  VMD with a learned prior): synthetic data: accuracy (the fraction inside the
  support), KL(data || samples) and TV; Sudoku: the fraction of puzzles solved;
  text8: a few decoded samples.

Command line (evaluate a trained workdir, optionally on another CSV):

  python -m vmd_jax.evaluate --workdir=DIR [--data=puzzles.csv] [--settings=top_prob:5]
"""

from __future__ import annotations

import functools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from vmd_jax import config as config_lib
from vmd_jax import prior as prior_lib
from vmd_jax.losses import DiagonalGaussian
from vmd_jax.data.atomic import atomic_write_path, write_json
from vmd_jax.model import MaskedDiffusion


def nelbo_metrics(model: MaskedDiffusion, params, dataset, config, key) -> dict:
  """Token-weighted NELBO (nats and bits per token) and its standard error."""
  sees_xt = model.encoder is not None and model.encoder.sees_xt

  @jax.jit
  def per_token(x0, key):
    terms = model.loss(params, x0, key)
    values = terms["per_token"]
    if model.encoder is not None:  # + KL / N: the VMD bound
      values = values + terms["kl"][:, None] / x0.shape[1]
    return values

  seq_values, seq_weights = [], []
  for i, batch in enumerate(dataset.eval_batches(config.eval.batch_size)):
    x0 = jnp.asarray(batch["x0"])
    w = np.asarray(batch["weight"], np.float64)
    acc = np.zeros(x0.shape[0])
    for k in range(config.eval.nelbo_samples):
      acc += np.sum(np.asarray(per_token(x0, jax.random.fold_in(key, i * 1000 + k))) * w, -1)
    seq_values.append(acc / config.eval.nelbo_samples)
    seq_weights.append(w.sum(-1))
  v, w = np.concatenate(seq_values), np.concatenate(seq_weights)
  rate = v.sum() / w.sum()
  stderr = math.sqrt(np.sum(np.square(v - rate * w))) / w.sum()
  name = "objective_not_a_bound" if sees_xt else "nelbo"
  return {f"{name}_nats_per_token": rate, f"{name}_bits_per_token": rate / math.log(2),
          f"{name}_bits_per_token_stderr": stderr / math.log(2),
          "eval_tokens": float(w.sum()), "time_samples_per_sequence": config.eval.nelbo_samples}


def fit_prior(model: MaskedDiffusion, params, dataset, config, workdir: str):
  """The Gaussian-mixture prior of ``prior.py``, fitted to q(z | x_0) over
  ``prior.fit_samples`` training sequences (loaded from ``prior.npz`` if there)."""
  path = os.path.join(workdir, "prior.npz")
  if os.path.exists(path):
    with np.load(path) as f:
      return prior_lib.GaussianMixture(*(jnp.asarray(f[k]) for k in prior_lib.GaussianMixture._fields))
  x0 = dataset.train_batch(2**31 - 1, config.prior.fit_samples)["x0"]
  encode = jax.jit(lambda x: tuple(model.encode_posteriors(params, x)))
  chunks = [encode(jnp.asarray(x0[i:i + 4096])) for i in range(0, len(x0), 4096)]
  posterior = DiagonalGaussian(*(jnp.concatenate(parts) for parts in zip(*chunks)))
  gmm = prior_lib.fit_aggregate_posterior_prior(
      posterior, jax.random.key(config.seed + 1), config.prior.components, config.prior.fit_iters)
  with atomic_write_path(path) as tmp:
    np.savez(tmp, **{k: np.asarray(v) for k, v in gmm._asdict().items()})
  return gmm


def _priors(model, params, dataset, config, workdir):
  if model.encoder is None:
    return {"": None}
  priors = {"": None}  # N(0, I)
  if config.prior.kind == "mixture":
    gmm = fit_prior(model, params, dataset, config, workdir)
    priors["/mixture"] = gmm.sample
  return priors


def sample_metrics(model: MaskedDiffusion, params, dataset, config, key, workdir) -> dict:
  """Sample quality for every ORDER:NFE setting and prior."""
  e = config.eval
  top_p = None if e.top_p >= 1.0 else e.top_p
  results = {}
  for suffix, prior in _priors(model, params, dataset, config, workdir).items():
    @functools.partial(jax.jit, static_argnums=(2, 3))
    def draw(key, x_init, nfe, order, prior=prior):
      return model.sample(params, key, x_init, nfe, order, prior=prior, temperature=e.temperature,
                          top_p=top_p, grid=e.grid)

    for order, nfe in config_lib.parse_eval_settings(e.settings):
      name = f"{order}:{nfe}{suffix}"
      key, sub = jax.random.split(key)
      results[name] = _score(draw, sub, nfe, order, dataset, config, workdir, name)
      logging.info("eval %s: %s", name, {k: v for k, v in results[name].items() if k != "text"})
  return results


def _score(draw, key, nfe, order, dataset, config, workdir, name) -> dict:
  kind, mask_id = config.data.name, dataset.vocab_size
  if kind == "synthetic":
    from vmd_jax.data import synthetic
    chunks, calls = [], []
    for i in range(0, config.eval.num_samples, config.eval.batch_size):
      rows = min(config.eval.batch_size, config.eval.num_samples - i)
      x_init = jnp.full((rows, dataset.seq_len), mask_id, jnp.int32)
      x, n = draw(jax.random.fold_in(key, i), x_init, nfe, order)
      chunks.append(np.asarray(x))
      calls.append(int(n))
    samples = np.concatenate(chunks)
    out = synthetic.synthetic_metrics(dataset.probs, samples, dataset.vocab_size)
    if dataset.seq_len == 2 and jax.process_index() == 0:
      synthetic.save_joint_figure(dataset.probs, samples, dataset.vocab_size,
                                  os.path.join(workdir, f"joint_{name.replace(':', '_').replace('/', '_')}.png"),
                                  title=name)
    return {**out, "nfe": max(calls), "num_samples": len(samples)}
  if kind == "sudoku":
    from vmd_jax.data import sudoku
    solved, total, calls = 0.0, 0.0, []
    for i, batch in enumerate(dataset.eval_batches(config.eval.batch_size)):
      x0, given = batch["x0"], batch["given"]
      x_init = jnp.asarray(np.where(given, x0, mask_id).astype(np.int32))
      x, n = draw(jax.random.fold_in(key, i), x_init, nfe, order)
      real = batch["weight"].max(-1) > 0
      ok = sudoku.sudoku_solved(np.asarray(x), x0, given)
      solved += float(np.sum(ok & real))
      total += float(np.sum(real))
      calls.append(int(n))
    return {"accuracy": solved / total, "num_puzzles": int(total), "nfe": max(calls)}
  if kind == "text8":
    from vmd_jax.data import text_normalize
    x_init = jnp.full((4, dataset.seq_len), mask_id, jnp.int32)
    x, n = draw(key, x_init, nfe, order)
    return {"text": [text_normalize.decode(row) for row in np.asarray(x)], "nfe": int(n)}
  raise ValueError(f"no sample metrics for dataset {kind!r}")


def evaluate_run(config, model, dataset, params, workdir: str, writer=None,
                 output: str = "eval.json") -> dict:
  """Runs every evaluation, writes ``output`` in ``workdir`` and returns it."""
  key = jax.random.key(config.seed + 12345)
  k_nelbo, k_samples = jax.random.split(key)
  result = {"model": config.model.kind, "data": config.data.name,
            "nelbo": nelbo_metrics(model, params, dataset, config, k_nelbo),
            "samples": sample_metrics(model, params, dataset, config, k_samples, workdir)}
  if jax.process_index() == 0:
    write_json(os.path.join(workdir, output), result)
    if writer is not None:
      scalars = {f"eval/{k}": v for k, v in result["nelbo"].items()}
      for name, metrics in result["samples"].items():
        scalars.update({f"eval/{name}/{k}": v for k, v in metrics.items()
                        if isinstance(v, (int, float))})
      writer.write_scalars(config.train.num_steps, scalars)
  return result


def evaluate_workdir(workdir: str, data: str | None = None, settings: str | None = None,
                     output: str | None = None) -> dict:
  """Evaluates the latest checkpoint (EMA weights) of a trained ``workdir``.

  ``data``: another evaluation file (a Sudoku CSV, or a .npy probability table);
  ``settings``: ORDER:NFE pairs replacing ``eval.settings``. Writes ``output``
  (default ``eval.json``, or ``eval_<data file stem>.json`` with ``data``).
  """
  import ml_collections

  from vmd_jax import builders, checkpoint, train

  config_path = os.path.join(workdir, "config.json")
  if not os.path.exists(config_path):
    raise FileNotFoundError(f"{config_path} not found: is {workdir} a vmd_jax workdir?")
  with open(config_path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  if data:
    if not os.path.exists(data):
      raise FileNotFoundError(f"evaluation data not found: {data}")
    field = {"sudoku": "sudoku_eval", "synthetic": "npy_path"}.get(config.data.name)
    if field is None:
      raise ValueError(f"--data is supported for sudoku and synthetic runs, not {config.data.name!r}")
    config.data[field] = data
    if field == "sudoku_eval" and config.data.num_eval:
      # The run's num_eval (e.g. 1000) caps the rows read, but a smaller file is whole.
      from vmd_jax.data import sudoku
      config.data.num_eval = min(config.data.num_eval, len(sudoku.load_sudoku_csv(data).puzzles))
  if settings:
    config.eval.settings = settings
  config_lib.validate(config)
  dataset = builders.build_dataset(config)
  model = builders.build_model(config, dataset)
  tx = train.make_optimizer(config.train)
  state = train.init_state(model, tx, jax.random.key(0), np.zeros((1, dataset.seq_len), np.int32))
  state = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints")).restore(state)
  if output is None:
    output = f"eval_{os.path.splitext(os.path.basename(data))[0]}.json" if data else "eval.json"
  return evaluate_run(config, model, dataset, state.ema_params, workdir, output=output)


def main(argv):
  from absl import flags
  del argv
  f = flags.FLAGS
  result = evaluate_workdir(f.workdir, f.data, f.settings, f.output)
  print(json.dumps(result["samples"], indent=2))


if __name__ == "__main__":
  from absl import app, flags
  flags.DEFINE_string("workdir", None, "A trained vmd_jax workdir.", required=True)
  flags.DEFINE_string("data", None, "Evaluation file: a Sudoku CSV (or a .npy table).")
  flags.DEFINE_string("settings", None, "ORDER:NFE pairs, e.g. top_prob:5,top_prob_margin:5.")
  flags.DEFINE_string("output", None, "Output JSON name inside the workdir.")
  app.run(main)
