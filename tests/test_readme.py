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
  exec(compile(blocks[0], "README.md", "exec"), {})
  out = capsys.readouterr().out
  bits = np.array([float(v) for v in re.findall(r"[\d.]+", out.split("\n")[0].split(":")[1])])
  assert len(bits) == 8 and np.all(bits >= 0)


def test_trained_model_example_runs(tmp_path, capsys):
  c = tiny_config("vmd", steps=6)
  c.data.synthetic = "d1"
  train.train_and_evaluate(c, str(tmp_path))
  exec(compile(library_blocks()[1], "README.md", "exec"), {"WORKDIR": str(tmp_path)})
  assert "[[" in capsys.readouterr().out
