"""The one place that lists every config field, its default and its valid values.

Each group is declared beside its checks (``model_defaults`` / ``check_model``,
...); ``config.data`` holds a group per registered dataset, brought by its
module (``vmd_jax.data``); values a module implements (schedules, sampling
orders, latent modes, ...) are read from it (``owned_values``); the rules
between model variants are ``networks.variant.check_variant``'s. Experiment
files in ``configs/`` start from ``base_config()`` and override a few fields;
``validate(config)`` runs once at start and fails at once, naming the field, on
an unknown key (a moved one: naming its new key, ``MOVED_KEYS``) or a bad value.
A config with a ``runs`` field is a sweep: ``runs.NAME`` is a full run config
for each row of a table.
"""

from __future__ import annotations

import difflib
import math

import ml_collections

from vmd_jax import data as data_registry

MODEL_KINDS = ("md4", "vmd")                # vmd: an encoder q(z | x_0) and its latent
DIFFUSION_KINDS = ("md4", "genmd4")         # genmd4: learned per-token schedule exponents
DTYPES = ("float32", "bfloat16")
POSITION_EMBEDDINGS = ("sinusoidal", "learned", "none")
EVAL_GRIDS = ("linear", "cosine")
PRIME_UNITS = ("token", "digit")


def owned_values() -> dict[str, tuple]:
  """The accepted values of the fields whose values a module implements, read
  from that module (imported here, at validation, so the command line's parsing
  needs no Flax)."""
  from vmd_jax import sampling, schedules
  from vmd_jax.networks import denoiser, encoder, transformer, variant
  return {"diffusion.schedule": tuple(schedules.SCHEDULES),
          "eval.settings order": tuple(sampling.ORDERS),
          "model.latent_mode": tuple(denoiser.LATENT_MODES),
          "model.latent_init": tuple(denoiser.LATENT_INITS),
          "model.mlp_type": tuple(transformer.ACTIVATIONS),
          "model.attention": tuple(transformer.ATTENTION_IMPLEMENTATIONS),
          "model.encoder_pooling": tuple(encoder.POOLINGS),
          "prior.kind": tuple(variant.PRIOR_KINDS)}


def _one_of(name, value, allowed=None):
  """``allowed`` defaults to the owner's list (``owned_values``)."""
  allowed = owned_values()[name] if allowed is None else allowed
  if value not in allowed:
    raise ValueError(f"config.{name} = {value!r}; accepted values: {list(allowed)}")


def _positive(name, value, allow_zero=False):
  if not isinstance(value, (int, float)) or value < 0 or (value == 0 and not allow_zero):
    raise ValueError(f"config.{name} = {value!r}; must be {'>= 0' if allow_zero else '> 0'}")


def _in_unit_interval(name, value):
  if not 0.0 <= value < 1.0:
    raise ValueError(f"config.{name} = {value!r}; must be in [0, 1)")


# Each group: its fields with their defaults, then its checks (of its own fields;
# the rules between model variants are ``networks.variant.check_variant``'s).

def data_defaults() -> ml_collections.ConfigDict:
  """``config.data``: the shared fields, and a group per registered dataset
  (``config.data.<name>``, its module's ``default_config()``)."""
  c = ml_collections.ConfigDict()
  c.name = "synthetic"                # a vmd_jax.data registry name
  c.vocab_size = 0                    # V and N where the dataset reads them from here: a
  c.seq_len = 0                       # flat .npy table; text8's window length (0: 256)
  c.num_eval = 0                      # evaluation items: sequences, puzzles, text8 windows of
                                      # seq_len characters (0 = the dataset's default / all)
  for name, group in data_registry.default_configs().items():
    c[name] = group
  return c


def check_data(d) -> None:
  _one_of("data.name", d.name, data_registry.names())
  for name in ("vocab_size", "seq_len", "num_eval"):
    _positive(f"data.{name}", d[name], allow_zero=True)
  data_registry.check_config(d)


def model_defaults() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.kind = "md4"                      # one of MODEL_KINDS
  c.width = 64
  c.depth = 2
  c.num_heads = 4
  c.mlp_ratio = 4.0
  c.mlp_multiple_of = 1               # GLU hidden = int(mlp_ratio * width) rounded up to this
  c.mlp_type = "swiglu"               # GLU gate (and adaLN input) activation (transformer.ACTIVATIONS)
  c.use_bias = True                   # biases in attention, MLP and head (md4: False)
  c.depth_scaled_init = False         # MLP init variance 2 / depth / fan_in (md4: True)
  c.embed_dim = 0                     # token embedding size, projected to width; 0 = width
  c.time_features = 256               # sinusoidal time features (md4: cond_dim)
  c.time_hidden = 0                   # time MLP hidden size; 0 = cond_dim (md4: 4 cond_dim)
  c.attention = "xla"                 # transformer.ATTENTION_IMPLEMENTATIONS
  c.remat = False                     # recompute blocks in the backward pass (less memory)
  c.dropout = 0.0
  c.dtype = "float32"                 # compute dtype, one of DTYPES; bfloat16 on GPU / TPU
  c.time_conditioning = True
  c.position_embedding = "sinusoidal"  # absolute positions, one of POSITION_EMBEDDINGS
  c.latent_dim = 2                    # VMD only
  c.latent_mode = "adaln"             # how z enters the denoiser (denoiser.LATENT_MODES)
  c.latent_init = "lecun_normal"      # Dense(z)'s kernel init (denoiser.LATENT_INITS);
                                      # "zeros": VMD starts as exactly its MD4 twin
  c.encoder_width = 64
  c.encoder_depth = 1
  c.encoder_heads = 4
  c.encoder_sees_xt = False           # True gives no likelihood bound (docs/vmd_settings.md)
  c.encoder_pooling = "mean"          # encoder.POOLINGS
  c.cond_dim = 0                      # adaLN conditioning width; 0 = width (md4's text8: 64)
  c.logvar_min = -10.0                # VMD encoder: soft clip of log sigma^2
  c.logvar_max = 5.0
  return c


def check_model(m) -> None:
  _one_of("model.kind", m.kind, MODEL_KINDS)
  for name in ("latent_mode", "latent_init", "encoder_pooling", "mlp_type", "attention"):
    _one_of(f"model.{name}", m[name])
  _one_of("model.dtype", m.dtype, DTYPES)
  _one_of("model.position_embedding", m.position_embedding, POSITION_EMBEDDINGS)
  if m.attention == "cudnn" and m.dtype != "bfloat16":
    raise ValueError(f"config.model.attention = 'cudnn' needs config.model.dtype = "
                     f"'bfloat16' (cuDNN's fused attention has no {m.dtype}); use 'xla'")
  for name in ("use_bias", "depth_scaled_init", "remat"):
    _one_of(f"model.{name}", m[name], (True, False))
  for name in ("width", "depth", "num_heads", "mlp_ratio", "encoder_width", "encoder_depth",
               "encoder_heads"):
    _positive(f"model.{name}", m[name])
  if int(m.mlp_ratio * m.width) < 1:
    raise ValueError(f"config.model.mlp_ratio = {m.mlp_ratio!r} leaves no MLP hidden unit at "
                     f"width {m.width}; need mlp_ratio * width >= 1")
  for name in ("cond_dim", "embed_dim", "time_hidden"):
    _positive(f"model.{name}", m[name], allow_zero=True)
  for name in ("mlp_multiple_of", "time_features"):
    _positive(f"model.{name}", m[name])
  if m.time_features % 2:
    raise ValueError(f"config.model.time_features = {m.time_features!r}; must be even "
                     "(cos and sin halves)")
  if not m.logvar_min < m.logvar_max:
    raise ValueError(f"config.model.logvar_min/max = {m.logvar_min!r}/{m.logvar_max!r}; "
                     "need min < max")
  for name, heads in (("width", "num_heads"), ("encoder_width", "encoder_heads")):
    if m[name] % m[heads]:
      raise ValueError(f"config.model.{name} = {m[name]} is not divisible by "
                       f"config.model.{heads} = {m[heads]}")
  if m.kind == "vmd":
    _positive("model.latent_dim", m.latent_dim)
  _in_unit_interval("model.dropout", m.dropout)


def diffusion_defaults() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.kind = "md4"                      # one of DIFFUSION_KINDS; "genmd4": the schedule's
                                      # exponents are learned (vmd_jax.genmd4), starting at
  c.genmd4_power_init = 1.0           # this exponent (1 = linear); schedule is then not read
  c.schedule = "linear"               # schedules.SCHEDULES
  c.schedule_k = 1.0                  # polynomial exponent
  c.eps = 1e-4                        # md4's shift (loglinear: MDLM's eps)
  c.loss_steps = 0                    # 0 = continuous-time NELBO, T = T-step NELBO
  c.antithetic = True                 # stratified times over the batch
  c.beta = 0.1                        # VMD KL weight (1 collapses, docs/vmd_settings.md)
  c.free_bits = 0.0                   # nats per latent dimension
  c.block_size = 0                    # 0 = one block (MD4/VMD); L' = block diffusion
  c.train_mask_rate_min = 0.0         # block training's clipped mask rate U[min, max]
  c.train_mask_rate_max = 1.0         # (BD3-LM; evaluation always uses U[0, 1])
  c.prime_digits = 1                  # MDM-Prime: l digits per token (1 = off)
  return c


def check_diffusion(f) -> None:
  if f.schedule == "genmd4":
    raise ValueError("config.diffusion.schedule = 'genmd4' is now config.diffusion.kind = "
                     "'genmd4'")
  _one_of("diffusion.kind", f.kind, DIFFUSION_KINDS)
  _one_of("diffusion.schedule", f.schedule)
  _positive("diffusion.schedule_k", f.schedule_k)
  _positive("diffusion.genmd4_power_init", f.genmd4_power_init)
  if not 0.0 <= f.eps < 0.5:
    raise ValueError(f"config.diffusion.eps = {f.eps!r}; must be in [0, 0.5)")
  _positive("diffusion.loss_steps", f.loss_steps, allow_zero=True)
  _positive("diffusion.beta", f.beta, allow_zero=True)
  _positive("diffusion.free_bits", f.free_bits, allow_zero=True)
  if not isinstance(f.block_size, int) or f.block_size < 0:
    raise ValueError(f"config.diffusion.block_size = {f.block_size!r}; must be an int >= 0")
  if not 0.0 <= f.train_mask_rate_min < f.train_mask_rate_max <= 1.0:
    raise ValueError("config.diffusion.train_mask_rate_min/max = "
                     f"{f.train_mask_rate_min!r}/{f.train_mask_rate_max!r}; need "
                     "0 <= min < max <= 1")
  l = f.prime_digits
  if not isinstance(l, int) or isinstance(l, bool) or l < 1:
    raise ValueError(f"config.diffusion.prime_digits = {l!r}; must be an int >= 1 (1 = off)")
  if 2 ** l > 2 ** 31 - 1:  # digits of base >= 2: at least 2^l codes, int32 tokens
    raise ValueError(f"config.diffusion.prime_digits = {l}; must be at most 30: {l} digits "
                     f"make at least 2^{l} codes, more than int32 tokens hold")


def prior_defaults() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.kind = "standard_normal"          # the z prior used at sampling (variant.PRIOR_KINDS);
                                      # "conditional" (block VMD): p(z_b | x^{<b}), a network
                                      # of the encoder's size trained with the model
  c.components = 16                   # mixture: Gaussian components
  c.fit_samples = 20000               # mixture: encodings of training data it is fitted to
  c.fit_iters = 200                   # mixture: EM iterations
  return c


def check_prior(p) -> None:
  _one_of("prior.kind", p.kind)
  for name in ("components", "fit_samples", "fit_iters"):
    _positive(f"prior.{name}", p[name])
  if p.kind == "mixture" and p.fit_samples < p.components:
    raise ValueError(f"config.prior.fit_samples = {p.fit_samples!r} is fewer than "
                     f"config.prior.components = {p.components!r}: a mixture needs at least "
                     "one encoding per component")


def train_defaults() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.batch_size = 256                  # global, over all devices and hosts
  c.num_steps = 3000
  c.lr = 1e-3
  c.schedule_lr = 0.0                 # genmd4: peak lr of the learned exponents; 0 = train.lr
  c.warmup_steps = 100
  c.end_lr_factor = 0.01              # cosine decay to lr * end_lr_factor
  c.weight_decay = 0.0
  c.b1 = 0.9
  c.b2 = 0.999
  c.grad_clip = 1.0                   # global-norm clipping; 0 = off
  c.ema_decay = 0.999                 # EMA weights for evaluation; 0 = off
  c.log_every = 200
  c.checkpoint_every = 1000
  c.keep_checkpoints = 2
  c.peak_flops_per_device = 0.0       # for the MFU log; 0 = the chip's from trainer/mfu.py
  c.profile_steps = ""                # "FIRST:LAST": a jax.profiler trace in WORKDIR/profile
  return c


def parse_profile_steps(spec: str) -> tuple[int, int] | None:
  """``train.profile_steps = "FIRST:LAST"`` as (FIRST, LAST), 1 <= FIRST <= LAST
  (steps counted from 1, as logged); "" is None (no trace)."""
  if not spec:
    return None
  first, sep, last = str(spec).partition(":")
  if not (sep and first.strip().isdigit() and last.strip().isdigit()
          and 1 <= int(first) <= int(last)):
    raise ValueError(f"config.train.profile_steps = {spec!r}; must be 'FIRST:LAST' with "
                     "1 <= FIRST <= LAST (steps counted from 1), or '' for no trace")
  return int(first), int(last)


def check_train(t) -> None:
  for name in ("batch_size", "num_steps", "lr", "log_every", "checkpoint_every",
               "keep_checkpoints"):
    _positive(f"train.{name}", t[name])
  for name in ("warmup_steps", "weight_decay", "grad_clip", "end_lr_factor",
               "peak_flops_per_device", "schedule_lr"):
    _positive(f"train.{name}", t[name], allow_zero=True)
  for name in ("ema_decay", "b1", "b2"):
    _in_unit_interval(f"train.{name}", t[name])
  parse_profile_steps(t.profile_steps)


def mesh_defaults() -> ml_collections.ConfigDict:  # trainer/sharding.py
  c = ml_collections.ConfigDict()
  c.data = -1                         # data-parallel axis size; -1 = the devices left over
  c.fsdp = 1                          # FSDP axis size: params / optimizer / EMA sharded
  c.fsdp_min_size = 2**18             # leaves with fewer elements stay replicated
  return c


def check_mesh(mesh) -> None:
  for name in ("data", "fsdp"):
    value = mesh[name]
    if not isinstance(value, int) or value == 0 or value < -1:
      raise ValueError(f"config.mesh.{name} = {value!r}; must be a positive int or -1 "
                       "(the devices left over)")
  if mesh.data == mesh.fsdp == -1:
    raise ValueError("config.mesh.data and config.mesh.fsdp are both -1; at most one may be")
  _positive("mesh.fsdp_min_size", mesh.fsdp_min_size, allow_zero=True)


def eval_defaults() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.num_samples = 10000               # samples drawn per setting (synthetic)
  c.batch_size = 1000
  c.settings = "random:1,random:4"    # comma-separated ORDER:NFE pairs
  c.temperature = 1.0
  c.top_p = 1.0
  c.grid = "linear"                   # one of EVAL_GRIDS
  c.prime_unit = "token"              # MDM-Prime's confidence orders rank "token"s or "digit"s
  c.nelbo_samples = 1                 # time samples per sequence for the NELBO / BPC
  return c


def check_eval(e) -> None:
  for name in ("num_samples", "batch_size", "nelbo_samples"):
    _positive(f"eval.{name}", e[name])
  _positive("eval.temperature", e.temperature, allow_zero=True)
  if not 0.0 < e.top_p <= 1.0:
    raise ValueError(f"config.eval.top_p = {e.top_p!r}; must be in (0, 1]")
  _one_of("eval.grid", e.grid, EVAL_GRIDS)
  _one_of("eval.prime_unit", e.prime_unit, PRIME_UNITS)
  parse_eval_settings(e.settings)


GROUPS = {"data": (data_defaults, check_data), "model": (model_defaults, check_model),
          "diffusion": (diffusion_defaults, check_diffusion),
          "prior": (prior_defaults, check_prior), "train": (train_defaults, check_train),
          "mesh": (mesh_defaults, check_mesh), "eval": (eval_defaults, check_eval)}


def base_config() -> ml_collections.ConfigDict:
  """Every field with its default. Small enough to train on a CPU in minutes."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  for name, (defaults, _) in GROUPS.items():
    c[name] = defaults()
  return c


# Keys moved since runs wrote their config.json, old -> new: a saved config.json
# is read through it (``migrate_saved``); a config file or flag naming an old key
# is refused in one line naming the new one.
MOVED_KEYS = {
    "data.synthetic": "data.synthetic.table",
    "data.npy_path": "data.synthetic.npy_path",
    "data.sudoku_train": "data.sudoku.train",
    "data.sudoku_eval": "data.sudoku.eval",
    "data.sudoku_augment": "data.sudoku.augment",
    "data.text8_source": "data.text8.source",
    "data.text8_path": "data.text8.path",
    "data.text8_data_dir": "data.text8.data_dir",
    "data.text8_normalize": "data.text8.normalize",
}


def moved_key_message(name: str) -> str:
  return f"config key {name!r} is now {MOVED_KEYS[name]!r}"


def unknown_key_message(name: str, known) -> str:
  """'unknown config key NAME; did you mean ...?' with the closest valid keys
  (for a key of ``MOVED_KEYS``: its new name)."""
  if name in MOVED_KEYS:
    return moved_key_message(name)
  leaf = name.rsplit(".", 1)[-1]
  close = difflib.get_close_matches(leaf, list(known), n=3, cutoff=0.5)
  prefix = name[:len(name) - len(leaf)]
  hint = (f"did you mean {', '.join(repr(prefix + k) for k in close)}?" if close
          else f"valid keys here: {sorted(known)}")
  return f"unknown config key {name!r}; {hint}"


def migrate_saved(saved: dict) -> dict:
  """A run's saved config.json (a nested dict) with ``MOVED_KEYS`` under their
  new names, and ``diffusion.schedule = "genmd4"`` as ``diffusion.kind``."""
  import copy
  saved = copy.deepcopy(saved)
  for old, new in MOVED_KEYS.items():
    group, key = old.split(".")
    if key in saved.get(group, {}) and not isinstance(saved[group][key], dict):
      node = saved
      value = saved[group].pop(key)
      for part in new.split(".")[:-1]:
        node = node.setdefault(part, {})
      node[new.rsplit(".", 1)[-1]] = value
  diffusion = saved.get("diffusion", {})
  if diffusion.get("schedule") == "genmd4":
    diffusion["kind"], diffusion["schedule"] = "genmd4", "linear"
  return saved


def _check_keys(config, reference, path=""):
  for key in config.keys():
    name = f"{path}{key}"
    if key == "runs" and not path:
      continue
    if key not in reference:
      raise ValueError(unknown_key_message(name, reference.keys()))
    value, ref = config[key], reference[key]
    if isinstance(ref, ml_collections.ConfigDict):
      if not isinstance(value, ml_collections.ConfigDict):
        if name in MOVED_KEYS:  # data.synthetic = "d2", a group now
          raise ValueError(moved_key_message(name))
        raise ValueError(f"config key {name!r} must be a group of fields")
      _check_keys(value, ref, name + ".")


def _check_finite(config, path="config"):
  """Refuses NaN and infinity anywhere (``--config.train.lr=nan``)."""
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      _check_finite(value, f"{path}.{key}")
    elif isinstance(value, float) and not math.isfinite(value):
      raise ValueError(f"{path}.{key} = {value!r}; must be a finite number")


def parse_eval_settings(text: str) -> list[tuple[str, int]]:
  """'top_prob:5,random:4' -> [('top_prob', 5), ('random', 4)]."""
  settings = []
  for item in filter(None, (s.strip() for s in text.split(","))):
    order, _, nfe = item.partition(":")
    _one_of("eval.settings order", order)
    if not nfe.isdigit() or int(nfe) < 1:
      raise ValueError(f"config.eval.settings item {item!r}: expected ORDER:NFE with NFE >= 1")
    settings.append((order, int(nfe)))
  return settings


def variant_of(config):
  """The ``networks.variant.Variant`` of ``config`` (V unknown)."""
  from vmd_jax.networks.variant import Variant
  m, f = config.model, config.diffusion
  genmd4 = f.kind == "genmd4"
  return Variant(latent=m.kind == "vmd", encoder_sees_xt=m.encoder_sees_xt,
                 encoder_pooling=m.encoder_pooling, latent_mode=m.latent_mode, genmd4=genmd4,
                 schedule="polynomial" if genmd4 else f.schedule, block_size=f.block_size,
                 train_mask_rate=(f.train_mask_rate_min, f.train_mask_rate_max),
                 prime_digits=f.prime_digits, loss_steps=f.loss_steps, prior=config.prior.kind)


def check_platform(config: ml_collections.ConfigDict, platform: str) -> None:
  """Raises ValueError for a setting that devices of ``platform`` ("cpu", "gpu",
  "tpu") cannot run; sweeps check each run."""
  for run in config.runs.values() if "runs" in config else [config]:
    if run.model.attention == "cudnn" and platform != "gpu":
      raise ValueError(f"config.model.attention = 'cudnn' runs on NVIDIA GPUs only, and "
                       f"this run's devices are {platform}: use 'xla' (or 'einsum')")


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks every key and value, group by group, then the model variant they
  compose (``check_variant``); returns the config. Sweeps validate each run."""
  from vmd_jax.networks.variant import check_variant
  if "runs" in config:
    for name, run in config.runs.items():
      try:
        validate(run)
      except ValueError as e:
        raise ValueError(f"in runs.{name}: {e}") from None
    return config
  _check_keys(config, base_config())
  _check_finite(config)
  if not isinstance(config.seed, int) or not 0 <= config.seed < 2**31:
    raise ValueError(f"config.seed = {config.seed!r}; must be an int in [0, 2^31)")
  for name, (_, check) in GROUPS.items():
    if name in config:  # (mesh is absent in configs saved before it existed: the defaults)
      check(config[name])
  if config.train.schedule_lr and config.diffusion.kind != "genmd4":
    raise ValueError(f"config.train.schedule_lr = {config.train.schedule_lr!r} needs "
                     "config.diffusion.kind = 'genmd4' (no other schedule is learned)")
  check_variant(variant_of(config), orders=parse_eval_settings(config.eval.settings))
  return config


def data_paths() -> tuple[str, ...]:
  """The data fields that hold paths, ``"sudoku.train"`` for
  ``config.data.sudoku.train`` (comma-separated there): every registered
  dataset's ``PATH_FIELDS``. Saved absolute in a run's config.json, so that its
  readers work from any directory; a resumed run may move them."""
  return data_registry.path_fields()


# What a resumed run may change: how long it trains, when and what it logs, saves
# and evaluates, the learning rate's schedule (a diverged run's remedy), where its
# data lives (``data_paths``), how its devices compute (mesh, kernel, remat) and
# the prior fitted after training. Anything else would train another run from its
# checkpoints.
RESUME_MAY_CHANGE = ("train.num_steps", "train.log_every", "train.checkpoint_every",
                     "train.keep_checkpoints", "train.peak_flops_per_device",
                     "train.profile_steps", "train.lr", "train.warmup_steps", "train.end_lr_factor", "train.schedule_lr", "eval.",
                     "mesh.", "prior.", "model.attention", "model.remat")


def with_absolute_paths(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of ``config`` whose local data paths (``data_paths``) are absolute,
  resolved against the current directory; URLs (``gs://...``), empty fields and
  named sources (``text8.path = "python-docs"``) are kept as they are."""
  import os

  from vmd_jax.data.paths import as_path
  from vmd_jax.data.text_sources import PYTHON_DOCS

  def absolute(path: str) -> str:
    path = path.strip()
    return path if path in ("", PYTHON_DOCS) else os.fspath(as_path(path))

  config = ml_collections.ConfigDict(config.to_dict())
  for field in data_paths():
    group, key = field.split(".")
    config.data[group][key] = ",".join(map(absolute, config.data[group][key].split(",")))
  return config


def resume_changes(saved: ml_collections.ConfigDict,
                   config: ml_collections.ConfigDict) -> list[str]:
  """The fields where ``config`` differs from the ``saved`` config of the run it
  would resume, outside ``RESUME_MAY_CHANGE``: ``["seed: 0 -> 7", ...]``."""
  from flax import traverse_util
  old, new = (traverse_util.flatten_dict(c.to_dict(), sep=".") for c in (saved, config))
  may_change = RESUME_MAY_CHANGE + tuple(f"data.{field}" for field in data_paths())
  return [f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in sorted(old.keys() | new.keys())
          if old.get(key) != new.get(key) and not key.startswith(may_change)]


def load_config_file(path: str, *args):
  """``get_config(*args)`` of the config file at ``path`` (for sweeps built from
  other experiment files: ``load_config_file(os.path.join(os.path.dirname(__file__),
  "synthetic_md4.py"))``)."""
  import importlib.util
  import os
  name = "vmd_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  if spec is None or not os.path.exists(path):
    raise FileNotFoundError(f"config file not found: {path}")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*args)
