"""TensorBoard summaries without TensorFlow: what the writer writes, TensorBoard reads back."""

import subprocess
import sys

import pytest
from tensorboard.backend.event_processing import event_accumulator  # vmd_jax[test]
from tensorboardX import record_writer

from vmd_jax.trainer import summaries


def read_events(logdir):
  acc = event_accumulator.EventAccumulator(str(logdir), size_guidance={"tensors": 0})
  acc.Reload()
  return acc


def test_scalars_texts_and_hparams_read_back(tmp_path):
  writer = summaries.SummaryWriter(tmp_path)
  writer.write_hparams({"train.lr": 1e-3, "model.kind": "vmd", "mesh.shape": (1, 2),
                        "data.path": None, "train.remat": False})
  writer.write_scalars(5, {"loss": 2.5, "eval/nelbo": 1.25})
  writer.write_scalars(10, {"loss": 2.0})
  writer.write_texts(10, {"samples": "the quick brown fox"})
  writer.close()
  acc = read_events(tmp_path)
  assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(5, 2.5), (10, 2.0)]
  assert [(e.step, e.value) for e in acc.Scalars("eval/nelbo")] == [(5, 1.25)]
  text = acc.Tensors("samples/text_summary")
  assert [e.step for e in text] == [10]
  assert text[0].tensor_proto.string_val == [b"the quick brown fox"]
  hparams = acc.PluginTagToContent("hparams")  # TensorBoard's HParams plugin data
  assert set(hparams) == {"_hparams_/experiment", "_hparams_/session_start_info",
                          "_hparams_/session_end_info"}
  assert b"train.lr" in hparams["_hparams_/experiment"]


def test_tags_are_legal():
  assert summaries.tag("eval/ancestral:64/mixture/nfe") == "eval/ancestral_64/mixture/nfe"
  assert summaries.tag("genmd4/w_9.x-y") == "genmd4/w_9.x-y"


def test_hparam_values_keep_what_tensorboard_takes():
  assert summaries.hparam_values({"a": 1, "b": 0.5, "c": "x", "d": True, "e": (1, 2),
                                  "f": None}) == {"a": 1, "b": 0.5, "c": "x", "d": True,
                                                  "e": "[1, 2]", "f": "null"}


def test_inactive_writer_writes_nothing(tmp_path):
  writer = summaries.SummaryWriter(tmp_path / "other_process", active=False)
  writer.write_scalars(1, {"loss": 1.0})
  writer.write_hparams({"a": 1})
  writer.close()
  assert not (tmp_path / "other_process").exists()


def test_bucket_paths_go_through_epath(tmp_path):
  """gs:// event files are written by the epath factory (here on a local path,
  the same code): the whole file at each flush, readable by TensorBoard."""
  assert isinstance(record_writer.REGISTERED_FACTORIES["gs"], summaries._EpathRecordFiles)
  factory = summaries._EpathRecordFiles()
  factory.directory_check(str(tmp_path / "run"))
  first = factory.open(str(tmp_path / "run" / "events.out.tfevents.1.host"))
  first.write(b"abc")
  first.flush()
  first.write(b"def")
  first.close()
  assert (tmp_path / "run" / "events.out.tfevents.1.host").read_bytes() == b"abcdef"


def test_a_training_run_loads_no_tensorflow(tmp_path):
  """A run on a dataset that needs no TensorFlow (synthetic) trains, writes its
  summaries and evaluates without loading it (vmd_jax[train] has no TensorFlow)."""
  code = f"""
import sys
from vmd_jax.trainer import config as config_lib, train
c = config_lib.base_config()
c.data.synthetic.table, c.data.num_eval = "two_token_uniform", 100
c.model.width, c.model.depth, c.model.num_heads = 16, 1, 2
c.train.batch_size, c.train.num_steps, c.train.log_every = 8, 2, 1
c.eval.settings, c.eval.num_samples, c.eval.batch_size = "random:1", 10, 10
train.train_and_evaluate(config_lib.validate(c), {str(tmp_path / "run")!r})
print(sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "clu")))
"""
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout[-2000:]
  events = read_events(tmp_path / "run")
  assert events.Scalars("loss")[-1].step == 2
  # The rate of each logged step's update: 0, then 1e-3 x 1/100 of the warmup.
  assert [(e.step, e.value) for e in events.Scalars("learning_rate")] == [
      (1, 0.0), (2, pytest.approx(1e-5, rel=1e-5))]  # float32


def test_profile_steps_write_a_trace(tmp_path):
  """train.profile_steps = "2:3": a jax.profiler trace of steps 2..3 in
  WORKDIR/profile, where TensorBoard's profile plugin looks."""
  from vmd_jax.trainer import config as config_lib, train
  c = config_lib.base_config()
  c.data.synthetic.table, c.data.num_eval = "two_token_uniform", 100
  c.model.width, c.model.depth, c.model.num_heads = 16, 1, 2
  c.train.batch_size, c.train.num_steps, c.train.log_every = 8, 4, 2
  c.train.profile_steps = "2:3"
  c.eval.settings, c.eval.num_samples, c.eval.batch_size = "random:1", 10, 10
  train.train_and_evaluate(config_lib.validate(c), str(tmp_path / "run"))
  traces = list((tmp_path / "run" / "profile" / "plugins" / "profile").glob("*/*.xplane.pb"))
  assert len(traces) == 1 and traces[0].stat().st_size > 0


@pytest.mark.parametrize("spec", ["3", "0:2", "4:3", "a:b"])
def test_bad_profile_steps_are_refused(spec):
  from vmd_jax.trainer import config as config_lib
  c = config_lib.base_config()
  c.train.profile_steps = spec
  with pytest.raises(ValueError, match=f"config.train.profile_steps = '{spec}'; must be 'FIRST:LAST'"):
    config_lib.validate(c)
