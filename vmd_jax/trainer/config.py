"""The one place that lists every config field, its default and its valid values.

Experiment files in ``configs/`` start from ``base_config()`` and override a few
fields; ``validate(config)`` runs once at start and fails at once, naming the
field, on an unknown key or a bad value. A config with a ``runs`` field is a
sweep: ``runs.NAME`` is a full run config for each row of a table.
"""

from __future__ import annotations

import difflib
import math

import ml_collections

from vmd_jax import data as data_registry

SCHEDULES = ("linear", "cosine", "polynomial", "loglinear", "genmd4")
SAMPLING_ORDERS = ("ancestral", "first_hitting", "top_prob", "top_prob_margin", "random")
MODEL_KINDS = ("md4", "vmd")
LATENT_MODES = ("adaln", "add", "prefix")
LATENT_INITS = ("lecun_normal", "zeros")
PRIORS = ("standard_normal", "mixture", "conditional")
DTYPES = ("float32", "bfloat16")
MLP_TYPES = ("swiglu", "geglu", "glu")
ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn", "einsum")


def base_config() -> ml_collections.ConfigDict:
  """Every field with its default. Small enough to train on a CPU in minutes."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.name = "synthetic"           # a vmd_jax.data registry name
  c.data.synthetic = "d1"             # a named table (vmd_jax.data.synthetic) ...
  c.data.npy_path = ""                # ... or a probability table in a .npy file
  c.data.vocab_size = 0               # V and N of the .npy table
  c.data.seq_len = 0
  c.data.sudoku_train = ""            # comma-separated CSV paths
  c.data.sudoku_eval = ""             # one CSV path
  c.data.sudoku_augment = False       # random digit relabelling of each grid
  c.data.text8_source = "local"       # "text8" (the real corpus) or "local" (any text)
  c.data.text8_path = ""              # text8 / text8.zip, or local text file / folder
  c.data.text8_data_dir = ""          # where tfds writes the prepared dataset
  c.data.text8_normalize = True       # normalise local text to text8's alphabet
  c.data.num_eval = 0                 # evaluation items: sequences, puzzles, text8 windows of
                                      # seq_len characters (0 = the dataset's default / all)

  c.model = ml_collections.ConfigDict()
  c.model.kind = "md4"                # one of MODEL_KINDS
  c.model.width = 64
  c.model.depth = 2
  c.model.num_heads = 4
  c.model.mlp_ratio = 4.0
  c.model.mlp_multiple_of = 1         # GLU hidden = int(mlp_ratio * width) rounded up to this
  c.model.mlp_type = "swiglu"         # one of MLP_TYPES: GLU gate (and adaLN input) activation
  c.model.use_bias = True             # biases in attention, MLP and head (md4: False)
  c.model.depth_scaled_init = False   # MLP init variance 2 / depth / fan_in (md4: True)
  c.model.embed_dim = 0               # token embedding size, projected to width; 0 = width
  c.model.time_features = 256         # sinusoidal time features (md4: cond_dim)
  c.model.time_hidden = 0             # time MLP hidden size; 0 = cond_dim (md4: 4 cond_dim)
  c.model.attention = "xla"           # one of ATTENTION_IMPLEMENTATIONS
  c.model.remat = False               # recompute blocks in the backward pass (less memory)
  c.model.dropout = 0.0
  c.model.dtype = "float32"           # compute dtype, one of DTYPES; bfloat16 on GPU / TPU
  c.model.time_conditioning = True
  c.model.position_embedding = "sinusoidal"  # absolute positions: "sinusoidal", "learned", "none"
  c.model.latent_dim = 2              # VMD only
  c.model.latent_mode = "adaln"       # how z enters the denoiser, one of LATENT_MODES
  c.model.latent_init = "lecun_normal"  # Dense(z)'s kernel init, one of LATENT_INITS;
                                      # "zeros": VMD starts as exactly its MD4 twin
  c.model.encoder_width = 64
  c.model.encoder_depth = 1
  c.model.encoder_heads = 4
  c.model.encoder_sees_xt = False     # True gives no likelihood bound (README "VMD settings")
  c.model.encoder_pooling = "mean"
  c.model.cond_dim = 0                # adaLN conditioning width; 0 = width (md4's text8: 64)
  c.model.logvar_min = -10.0          # VMD encoder: soft clip of log sigma^2
  c.model.logvar_max = 5.0

  c.diffusion = ml_collections.ConfigDict()
  c.diffusion.schedule = "linear"     # one of SCHEDULES
  c.diffusion.schedule_k = 1.0        # polynomial exponent
  c.diffusion.genmd4_power_init = 1.0  # genmd4: every learned exponent w_v starts here (1 = linear)
  c.diffusion.eps = 1e-4              # md4's shift (loglinear: MDLM's eps)
  c.diffusion.loss_steps = 0          # 0 = continuous-time NELBO, T = T-step NELBO
  c.diffusion.antithetic = True       # stratified times over the batch
  c.diffusion.beta = 0.1              # VMD KL weight (1 collapses, README "VMD settings")
  c.diffusion.free_bits = 0.0         # nats per latent dimension
  c.diffusion.block_size = 0          # 0 = one block (MD4/VMD); L' = block diffusion
  c.diffusion.train_mask_rate_min = 0.0  # block training's clipped mask rate U[min, max]
  c.diffusion.train_mask_rate_max = 1.0  # (BD3-LM; evaluation always uses U[0, 1])
  c.diffusion.prime_digits = 1        # MDM-Prime: l digits per token (1 = off)

  c.prior = ml_collections.ConfigDict()
  c.prior.kind = "standard_normal"    # one of PRIORS: the z prior used at sampling;
                                      # "conditional" (block VMD): p(z_b | x^{<b}), a network
                                      # of the encoder's size trained with the model
  c.prior.components = 16             # mixture: Gaussian components
  c.prior.fit_samples = 20000         # mixture: encodings of training data it is fitted to
  c.prior.fit_iters = 200             # mixture: EM iterations

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 256            # global, over all devices and hosts
  c.train.num_steps = 3000
  c.train.lr = 1e-3
  c.train.schedule_lr = 0.0           # genmd4: peak lr of the learned exponents; 0 = train.lr
  c.train.warmup_steps = 100
  c.train.end_lr_factor = 0.01        # cosine decay to lr * end_lr_factor
  c.train.weight_decay = 0.0
  c.train.b1 = 0.9
  c.train.b2 = 0.999
  c.train.grad_clip = 1.0             # global-norm clipping; 0 = off
  c.train.ema_decay = 0.999           # EMA weights for evaluation; 0 = off
  c.train.log_every = 200
  c.train.checkpoint_every = 1000
  c.train.keep_checkpoints = 2
  c.train.peak_flops_per_device = 0.0  # for the MFU log; 0 = the chip's from trainer/mfu.py

  c.mesh = ml_collections.ConfigDict()  # trainer/sharding.py
  c.mesh.data = -1                    # data-parallel axis size; -1 = the devices left over
  c.mesh.fsdp = 1                     # FSDP axis size: params / optimizer / EMA sharded
  c.mesh.fsdp_min_size = 2**18        # leaves with fewer elements stay replicated

  c.eval = ml_collections.ConfigDict()
  c.eval.num_samples = 10000          # samples drawn per setting (synthetic)
  c.eval.batch_size = 1000
  c.eval.settings = "random:1,random:4"  # comma-separated ORDER:NFE pairs
  c.eval.temperature = 1.0
  c.eval.top_p = 1.0
  c.eval.grid = "linear"
  c.eval.prime_unit = "token"         # MDM-Prime's confidence orders rank "token"s or "digit"s
  c.eval.nelbo_samples = 1            # time samples per sequence for the NELBO / BPC
  return c


def unknown_key_message(name: str, known) -> str:
  """'unknown config key NAME; did you mean ...?' with the closest valid keys."""
  leaf = name.rsplit(".", 1)[-1]
  close = difflib.get_close_matches(leaf, list(known), n=3, cutoff=0.5)
  prefix = name[:len(name) - len(leaf)]
  hint = (f"did you mean {', '.join(repr(prefix + k) for k in close)}?" if close
          else f"valid keys here: {sorted(known)}")
  return f"unknown config key {name!r}; {hint}"


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
        raise ValueError(f"config key {name!r} must be a group of fields")
      _check_keys(value, ref, name + ".")


def _check_finite(config, path="config"):
  """Refuses NaN and infinity anywhere (``--config.train.lr=nan``)."""
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      _check_finite(value, f"{path}.{key}")
    elif isinstance(value, float) and not math.isfinite(value):
      raise ValueError(f"{path}.{key} = {value!r}; must be a finite number")


def _one_of(name, value, allowed):
  if value not in allowed:
    raise ValueError(f"config.{name} = {value!r}; accepted values: {list(allowed)}")


def _positive(name, value, allow_zero=False):
  if not isinstance(value, (int, float)) or value < 0 or (value == 0 and not allow_zero):
    raise ValueError(f"config.{name} = {value!r}; must be {'>= 0' if allow_zero else '> 0'}")


def parse_eval_settings(text: str) -> list[tuple[str, int]]:
  """'top_prob:5,random:4' -> [('top_prob', 5), ('random', 4)]."""
  settings = []
  for item in filter(None, (s.strip() for s in text.split(","))):
    order, _, nfe = item.partition(":")
    _one_of("eval.settings order", order, SAMPLING_ORDERS)
    if not nfe.isdigit() or int(nfe) < 1:
      raise ValueError(f"config.eval.settings item {item!r}: expected ORDER:NFE with NFE >= 1")
    settings.append((order, int(nfe)))
  return settings


def _check_prime(config):
  """MDM-Prime (diffusion.prime_digits = l > 1) works with MD4, VMD and blocks; a
  VMD encoder must see x_0 alone (Prime's x_t is digits, and only then a bound)."""
  l = config.diffusion.prime_digits
  if not isinstance(l, int) or isinstance(l, bool) or l < 1:
    raise ValueError(f"config.diffusion.prime_digits = {l!r}; must be an int >= 1 (1 = off)")
  if 2 ** l > 2 ** 31 - 1:  # digits of base >= 2: at least 2^l codes, int32 tokens
    raise ValueError(f"config.diffusion.prime_digits = {l}; must be at most 30: {l} digits "
                     f"make at least 2^{l} codes, more than int32 tokens hold")
  if l > 1 and config.model.kind == "vmd" and config.model.encoder_sees_xt:
    raise ValueError("config.diffusion.prime_digits > 1 needs config.model.encoder_sees_xt "
                     "= False (the encoder sees x_0 alone)")


def _check_genmd4(config) -> None:
  """GenMD4 (learned per-token exponents) is implemented for MD4 with the
  continuous-time NELBO and the ancestral sampler only (``vmd_jax.genmd4``)."""
  f = config.diffusion
  _positive("diffusion.genmd4_power_init", f.get("genmd4_power_init", 1.0))
  schedule_lr = config.train.get("schedule_lr", 0.0)
  _positive("train.schedule_lr", schedule_lr, allow_zero=True)
  if f.schedule != "genmd4":
    if schedule_lr:
      raise ValueError(f"config.train.schedule_lr = {schedule_lr!r} needs "
                       "config.diffusion.schedule = 'genmd4' (no other schedule is learned)")
    return
  needs = "config.diffusion.schedule = 'genmd4' needs"
  if config.model.kind != "md4":
    raise ValueError(f"{needs} config.model.kind = 'md4', got {config.model.kind!r}")
  if f.block_size:
    raise ValueError(f"{needs} config.diffusion.block_size = 0, got {f.block_size!r}")
  if f.prime_digits > 1:
    raise ValueError(f"{needs} config.diffusion.prime_digits = 1, got {f.prime_digits!r}")
  if f.loss_steps:
    raise ValueError(f"{needs} config.diffusion.loss_steps = 0 (the continuous-time "
                     f"NELBO), got {f.loss_steps!r}")
  for order, nfe in parse_eval_settings(config.eval.settings):
    if order != "ancestral":
      raise ValueError(f"{needs} the 'ancestral' order in config.eval.settings, got "
                       f"'{order}:{nfe}' (vmd_jax.genmd4 samples ancestrally only)")


def check_platform(config: ml_collections.ConfigDict, platform: str) -> None:
  """Raises ValueError for a setting that devices of ``platform`` ("cpu", "gpu",
  "tpu") cannot run; sweeps check each run."""
  for run in config.runs.values() if "runs" in config else [config]:
    if run.model.attention == "cudnn" and platform != "gpu":
      raise ValueError(f"config.model.attention = 'cudnn' runs on NVIDIA GPUs only, and "
                       f"this run's devices are {platform}: use 'xla' (or 'einsum')")


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks every key and value; returns the config. Sweeps validate each run."""
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
  d, m, f, p, t, e = (config.data, config.model, config.diffusion, config.prior,
                      config.train, config.eval)
  _one_of("data.name", d.name, data_registry.names())
  _one_of("data.text8_source", d.text8_source, ("text8", "local"))
  _positive("data.vocab_size", d.vocab_size, allow_zero=True)
  _positive("data.seq_len", d.seq_len, allow_zero=True)
  _positive("data.num_eval", d.num_eval, allow_zero=True)
  if d.name == "sudoku" and not (d.sudoku_train and d.sudoku_eval):
    raise ValueError("config.data.name = 'sudoku' needs config.data.sudoku_train and "
                     "config.data.sudoku_eval (CSV paths)")
  _one_of("model.kind", m.kind, MODEL_KINDS)
  _one_of("model.latent_mode", m.latent_mode, LATENT_MODES)
  _one_of("model.latent_init", m.latent_init, LATENT_INITS)
  _one_of("model.dtype", m.dtype, DTYPES)
  _one_of("model.encoder_pooling", m.encoder_pooling, ("mean", "cls"))
  _one_of("model.position_embedding", m.position_embedding, ("sinusoidal", "learned", "none"))
  _one_of("model.mlp_type", m.mlp_type, MLP_TYPES)
  _one_of("model.attention", m.attention, ATTENTION_IMPLEMENTATIONS)
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
  if not 0.0 <= m.dropout < 1.0:
    raise ValueError(f"config.model.dropout = {m.dropout!r}; must be in [0, 1)")
  _one_of("diffusion.schedule", f.schedule, SCHEDULES)
  _positive("diffusion.schedule_k", f.schedule_k)
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
  if (f.train_mask_rate_min, f.train_mask_rate_max) != (0.0, 1.0) and not f.block_size:
    raise ValueError("config.diffusion.train_mask_rate_min/max need "
                     "config.diffusion.block_size > 0")
  if f.block_size and m.kind == "vmd":
    if m.latent_mode == "prefix":
      raise ValueError("config.model.latent_mode = 'prefix' is not supported with "
                       "config.diffusion.block_size > 0 (use 'adaln' or 'add')")
    if m.encoder_sees_xt or m.encoder_pooling != "mean":
      raise ValueError("block VMD (config.diffusion.block_size > 0) needs "
                       "config.model.encoder_sees_xt = False and encoder_pooling = 'mean'")
  _check_prime(config)
  _check_genmd4(config)
  _one_of("prior.kind", p.kind, PRIORS)
  if p.kind != "standard_normal" and m.kind != "vmd":
    raise ValueError(f"config.prior.kind = {p.kind!r} needs config.model.kind = 'vmd'")
  if p.kind == "conditional" and (not f.block_size or f.prime_digits > 1):
    raise ValueError("config.prior.kind = 'conditional' (p(z_b | x^{<b})) needs block VMD: "
                     "config.diffusion.block_size > 0 and prime_digits = 1")
  for name in ("components", "fit_samples", "fit_iters"):
    _positive(f"prior.{name}", p[name])
  if p.kind == "mixture" and p.fit_samples < p.components:
    raise ValueError(f"config.prior.fit_samples = {p.fit_samples!r} is fewer than "
                     f"config.prior.components = {p.components!r}: a mixture needs at least "
                     "one encoding per component")
  for name in ("batch_size", "num_steps", "lr", "log_every", "checkpoint_every",
               "keep_checkpoints"):
    _positive(f"train.{name}", t[name])
  for name in ("warmup_steps", "weight_decay", "grad_clip", "end_lr_factor"):
    _positive(f"train.{name}", t[name], allow_zero=True)
  for name in ("ema_decay", "b1", "b2"):
    if not 0.0 <= t[name] < 1.0:
      raise ValueError(f"config.train.{name} = {t[name]!r}; must be in [0, 1)")
  for name in ("num_samples", "batch_size", "nelbo_samples"):
    _positive(f"eval.{name}", e[name])
  _positive("train.peak_flops_per_device", t.get("peak_flops_per_device", 0.0), allow_zero=True)
  if "mesh" in config:  # (absent in configs saved before it existed: the defaults)
    for name in ("data", "fsdp"):
      value = config.mesh[name]
      if not isinstance(value, int) or value == 0 or value < -1:
        raise ValueError(f"config.mesh.{name} = {value!r}; must be a positive int or -1 "
                         "(the devices left over)")
    if config.mesh.data == config.mesh.fsdp == -1:
      raise ValueError("config.mesh.data and config.mesh.fsdp are both -1; at most one may be")
    _positive("mesh.fsdp_min_size", config.mesh.fsdp_min_size, allow_zero=True)
  _positive("eval.temperature", e.temperature, allow_zero=True)
  if not 0.0 < e.top_p <= 1.0:
    raise ValueError(f"config.eval.top_p = {e.top_p!r}; must be in (0, 1]")
  _one_of("eval.grid", e.grid, ("linear", "cosine"))
  _one_of("eval.prime_unit", e.prime_unit, ("token", "digit"))
  parse_eval_settings(e.settings)
  return config


# What a resumed run may change: how long it trains, when and what it logs, saves
# and evaluates, the learning rate's schedule (a diverged run's remedy), where its
# data lives, how its devices compute (mesh, kernel, remat) and the prior fitted
# after training. Anything else would train another run from its checkpoints.
RESUME_MAY_CHANGE = ("train.num_steps", "train.log_every", "train.checkpoint_every",
                     "train.keep_checkpoints", "train.peak_flops_per_device", "train.lr",
                     "train.warmup_steps", "train.end_lr_factor", "train.schedule_lr", "eval.",
                     "mesh.", "prior.", "model.attention", "model.remat", "data.npy_path",
                     "data.sudoku_train", "data.sudoku_eval", "data.text8_path",
                     "data.text8_data_dir")


# The data fields that hold paths (``sudoku_train``: comma-separated), saved
# absolute in a run's config.json so its readers work from any directory.
DATA_PATHS = ("npy_path", "sudoku_train", "sudoku_eval", "text8_path", "text8_data_dir")


def with_absolute_paths(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of ``config`` whose local data paths (``DATA_PATHS``) are absolute,
  resolved against the current directory; URLs (``gs://...``), empty fields and
  named sources (``text8_path = "python-docs"``) are kept as they are."""
  import os

  from vmd_jax.data.paths import as_path
  from vmd_jax.data.text_sources import PYTHON_DOCS

  def absolute(path: str) -> str:
    path = path.strip()
    return path if path in ("", PYTHON_DOCS) else os.fspath(as_path(path))

  config = ml_collections.ConfigDict(config.to_dict())
  for field in DATA_PATHS:
    config.data[field] = ",".join(map(absolute, config.data[field].split(",")))
  return config


def resume_changes(saved: ml_collections.ConfigDict,
                   config: ml_collections.ConfigDict) -> list[str]:
  """The fields where ``config`` differs from the ``saved`` config of the run it
  would resume, outside ``RESUME_MAY_CHANGE``: ``["seed: 0 -> 7", ...]``."""
  from flax import traverse_util
  old, new = (traverse_util.flatten_dict(c.to_dict(), sep=".") for c in (saved, config))
  return [f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in sorted(old.keys() | new.keys())
          if old.get(key) != new.get(key) and not key.startswith(RESUME_MAY_CHANGE)]


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
