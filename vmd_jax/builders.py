"""From a validated config to the dataset, the schedule and the model."""

from __future__ import annotations

import jax.numpy as jnp

from vmd_jax.data import base
from vmd_jax.model import MaskedDiffusion
from vmd_jax.models import Denoiser, LatentEncoder
from vmd_jax.schedules import Schedule, get_schedule


def build_dataset(config) -> base.Dataset:
  d = config.data
  num_eval = d.num_eval or None
  if d.name == "synthetic":
    from vmd_jax.data import synthetic
    kwargs = {"num_eval": num_eval} if num_eval else {}
    if d.npy_path:
      return synthetic.from_npy(d.npy_path, d.vocab_size, d.seq_len, seed=config.seed, **kwargs)
    return synthetic.get_synthetic(d.synthetic, seed=config.seed, **kwargs)
  if d.name == "sudoku":
    from vmd_jax.data import sudoku
    train_paths = [p.strip() for p in d.sudoku_train.split(",") if p.strip()]
    return sudoku.SudokuDataset(train_paths, d.sudoku_eval, seed=config.seed,
                                num_eval=num_eval, augment=d.sudoku_augment)
  if d.name == "text8":
    from vmd_jax.data import text8
    return text8.dataset_from_config(d, seq_len=d.seq_len or 256, seed=config.seed)
  raise ValueError(f"unknown dataset {d.name!r}")


def build_schedule(config) -> Schedule:
  f = config.diffusion
  params = {"eps": f.eps}
  if f.schedule == "polynomial":
    params["k"] = f.schedule_k
  return get_schedule(f.schedule, **params)


def build_model(config, dataset: base.Dataset) -> MaskedDiffusion:
  m, f = config.model, config.diffusion
  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[m.dtype]
  vmd = m.kind == "vmd"
  denoiser = Denoiser(
      vocab_size=dataset.vocab_size, width=m.width, depth=m.depth, num_heads=m.num_heads,
      mlp_ratio=m.mlp_ratio, dropout_rate=m.dropout, dtype=dtype,
      time_conditioning=m.time_conditioning, latent_dim=m.latent_dim if vmd else 0,
      learned_positions=dataset.seq_len if m.position_embedding == "learned" else 0,
      latent_mode=m.latent_mode)
  encoder = None
  if vmd:
    encoder = LatentEncoder(
        vocab_size=dataset.vocab_size, width=m.encoder_width, depth=m.encoder_depth,
        num_heads=m.encoder_heads, latent_dim=m.latent_dim, sees_xt=m.encoder_sees_xt,
        pooling=m.encoder_pooling, dropout_rate=m.dropout, dtype=dtype,
        block_size=f.block_size)
  if f.block_size and dataset.seq_len % f.block_size:
    raise ValueError(f"config.diffusion.block_size = {f.block_size} does not divide the "
                     f"sequence length {dataset.seq_len} of {config.data.name!r}")
  if f.block_size:
    from vmd_jax.config import parse_eval_settings
    blocks = dataset.seq_len // f.block_size
    for order, nfe in parse_eval_settings(config.eval.settings):
      if nfe % blocks:
        raise ValueError(f"config.eval.settings {order}:{nfe}: the NFE must be a multiple of "
                         f"the {blocks} blocks (each block gets NFE / {blocks} steps)")
  return MaskedDiffusion(denoiser=denoiser, schedule=build_schedule(config), encoder=encoder,
                         beta=f.beta, free_bits=f.free_bits,
                         loss_steps=f.loss_steps or None, antithetic=f.antithetic,
                         block_size=f.block_size or None,
                         train_mask_rate=(f.train_mask_rate_min, f.train_mask_rate_max))
