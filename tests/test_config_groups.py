"""The config's ownership: allowed values read from the modules that implement
them, dataset groups brought by ``data.register``, moved keys refused in one line
and migrated in a saved config.json, and the variant rules shared by the config
and the model (``networks.variant.check_variant``)."""

import json
import sys
import textwrap

import pytest

from vmd_jax import data as data_registry
from vmd_jax.trainer import config as config_lib


def test_allowed_values_are_their_owners():
  from vmd_jax import sampling, schedules
  from vmd_jax.networks import denoiser, encoder, transformer, variant
  owners = {"diffusion.schedule": schedules.SCHEDULES, "eval.settings order": sampling.ORDERS,
            "model.latent_mode": denoiser.LATENT_MODES, "model.latent_init": denoiser.LATENT_INITS,
            "model.mlp_type": transformer.ACTIVATIONS,
            "model.attention": transformer.ATTENTION_IMPLEMENTATIONS,
            "model.encoder_pooling": encoder.POOLINGS, "prior.kind": variant.PRIOR_KINDS}
  assert config_lib.owned_values() == {k: tuple(v) for k, v in owners.items()}
  for name in ("SCHEDULES", "SAMPLING_ORDERS", "LATENT_MODES", "MLP_TYPES",
               "ATTENTION_IMPLEMENTATIONS"):
    assert not hasattr(config_lib, name)  # no hand-made copy left to drift
  c = config_lib.base_config()
  for value in transformer.ACTIVATIONS:  # every owner's value is accepted
    c.model.mlp_type = value
    config_lib.validate(c)
  c.model.mlp_type = "relu"
  with pytest.raises(ValueError, match=r"config.model.mlp_type = 'relu'; accepted values: "
                                       r"\['swiglu', 'geglu', 'glu'\]"):
    config_lib.validate(c)


def test_every_group_has_its_defaults_and_checks():
  c = config_lib.base_config()
  assert set(config_lib.GROUPS) == {k for k in c.keys() if k != "seed"}
  for group, (defaults, check) in config_lib.GROUPS.items():
    check(defaults())  # the defaults pass their own checks


@pytest.mark.parametrize("key,value", [
    ("data.sudoku_train", "a.csv"), ("data.sudoku_augment", True), ("data.npy_path", "t.npy"),
    ("data.text8_source", "local"), ("data.text8_data_dir", "/tmp"), ("data.synthetic", "d2"),
])
def test_old_flat_data_keys_are_refused_naming_the_new_one(key, value):
  c = config_lib.base_config()
  group, leaf = key.split(".")
  if leaf == "synthetic":
    del c.data.synthetic
  c[group][leaf] = value
  new = config_lib.MOVED_KEYS[key]
  with pytest.raises(ValueError, match=rf"^config key '{key}' is now '{new}'$"):
    config_lib.validate(c)


def test_old_keys_on_the_command_line_are_refused_naming_the_new_one():
  from vmd_jax.trainer import cli
  for arg, new in (("--config.data.text8_source=local", "data.text8.source"),
                   ("--config.data.synthetic=d2", "data.synthetic.table")):
    with pytest.raises(cli.InputError, match=rf"is now '{new}'"):
      cli.check_overrides(["vmd-jax", "--config=synthetic_md4", arg])


def test_schedule_genmd4_is_refused_naming_diffusion_kind():
  c = config_lib.base_config()
  c.diffusion.schedule = "genmd4"
  with pytest.raises(ValueError, match=r"^config.diffusion.schedule = 'genmd4' is now "
                                       r"config.diffusion.kind = 'genmd4'$"):
    config_lib.validate(c)


def test_a_config_json_of_the_old_layout_loads(tmp_path):
  """A run trained before the dataset groups and diffusion.kind: its flat data
  keys and ``schedule = "genmd4"`` are read under their new names."""
  from vmd_jax.trainer.load import load_config
  saved = config_lib.base_config().to_dict()
  del saved["data"]["synthetic"], saved["data"]["sudoku"], saved["data"]["text8"]
  del saved["diffusion"]["kind"]
  saved["data"].update(synthetic="two_token_uniform", npy_path="", sudoku_train="/d/a.csv",
                       sudoku_eval="/d/b.csv", sudoku_augment=True, text8_source="text8",
                       text8_path="/d/text8.zip", text8_data_dir="/d/tfds",
                       text8_normalize=False)
  saved["diffusion"]["schedule"] = "genmd4"
  saved["eval"]["settings"] = "ancestral:2"
  (tmp_path / "config.json").write_text(json.dumps(saved))
  c = load_config(tmp_path)
  assert c.data.synthetic.table == "two_token_uniform" and c.data.synthetic.npy_path == ""
  assert (c.data.sudoku.train, c.data.sudoku.eval, c.data.sudoku.augment) == (
      "/d/a.csv", "/d/b.csv", True)
  assert (c.data.text8.source, c.data.text8.path, c.data.text8.data_dir,
          c.data.text8.normalize) == ("text8", "/d/text8.zip", "/d/tfds", False)
  assert (c.diffusion.kind, c.diffusion.schedule) == ("genmd4", "linear")


def test_a_registered_dataset_brings_its_group(tmp_path, monkeypatch):
  (tmp_path / "toy_dataset.py").write_text(textwrap.dedent('''
      import ml_collections
      PATH_FIELDS = ("path",)
      def default_config():
        c = ml_collections.ConfigDict()
        c.path = ""
        c.repeats = 1
        return c
      def check_config(data_config, in_use):
        if data_config.toy.repeats < 1:
          raise ValueError(f"config.data.toy.repeats = {data_config.toy.repeats}; must be >= 1")
      def from_config(data_config, seed):
        raise NotImplementedError
      def render(tokens):
        return str(tokens)
  '''))
  monkeypatch.syspath_prepend(str(tmp_path))
  monkeypatch.setitem(data_registry._MODULES, "toy", "toy_dataset")
  c = config_lib.base_config()
  assert (c.data.toy.path, c.data.toy.repeats) == ("", 1)
  assert "toy.path" in config_lib.data_paths()
  c.data.name = "toy"
  config_lib.validate(c)
  c.data.toy.repeats = 0
  with pytest.raises(ValueError, match=r"config.data.toy.repeats = 0; must be >= 1"):
    config_lib.validate(c)
  sys.modules.pop("toy_dataset", None)


def test_config_and_model_share_the_variant_rules():
  """One rule, one message: a GenMD4 VMD refused by the config and by the model."""
  import jax.numpy as jnp  # noqa: F401  (jax before flax)
  from vmd_jax.networks import Denoiser, LatentEncoder, MaskedDiffusion
  from vmd_jax.schedules import get_schedule
  c = config_lib.base_config()
  c.model.kind, c.diffusion.kind, c.eval.settings = "vmd", "genmd4", "ancestral:2"
  message = r"config.diffusion.kind = 'genmd4' needs config.model.kind = 'md4', got 'vmd'"
  with pytest.raises(ValueError, match=message):
    config_lib.validate(c)
  den = Denoiser(vocab_size=4, width=8, depth=1, num_heads=1, latent_dim=2)
  enc = LatentEncoder(vocab_size=4, width=8, depth=1, num_heads=1, latent_dim=2)
  with pytest.raises(ValueError, match=message):
    MaskedDiffusion(den, get_schedule("linear"), enc, learn_schedule=True)
