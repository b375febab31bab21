"""The README's library section runs as written."""

import re
from pathlib import Path

import numpy as np

from vmd_jax.trainer import train
from test_train import tiny_config

README = Path(__file__).resolve().parents[1] / "README.md"


def library_blocks():
  text = README.read_text()
  section = text[text.index("## Using the library"):]
  section = section[:section.index("\n## ", 1)]
  return re.findall(r"```python\n(.*?)```", section, re.S)


def test_library_example_runs(capsys):
  blocks = library_blocks()
  assert len(blocks) == 2
  scope = {}
  exec(compile(blocks[0], "README.md", "exec"), scope)
  assert capsys.readouterr().out.startswith("bits per token: [")
  nelbo = np.asarray(scope["nelbo"])
  assert nelbo.shape == (8,) and np.all(np.isfinite(nelbo)) and np.all(nelbo >= 0)
  x = np.asarray(scope["draw"](scope["jax"].random.key(3), scope["x_init"]))
  assert x.shape == (8, scope["N"]) and x.min() >= 0 and x.max() < scope["V"]
  # The exact denoiser's samples stay inside the joint's support.
  assert np.all(scope["probs"][scope["exact"].sequence_index(x, scope["V"])] > 0)


def test_trained_model_example_runs(tmp_path, capsys):
  c = tiny_config("vmd", steps=6)
  c.data.synthetic.table = "d1"
  train.train_and_evaluate(c, str(tmp_path))
  exec(compile(library_blocks()[1], "README.md", "exec"), {"WORKDIR": str(tmp_path)})
  assert "[[" in capsys.readouterr().out
