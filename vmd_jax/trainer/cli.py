"""The command line: ``vmd-jax train | evaluate | sample | compile`` (needs ``vmd_jax[train]``).

  vmd-jax train --config=configs/synthetic_table.py --workdir=runs/table \
      [--config.train.num_steps=100] [--distributed]
  vmd-jax evaluate --workdir=DIR [--data=FILE] [--settings=top_prob:5,random:4]
      [--judge=JUDGE_WORKDIR]
  vmd-jax sample --workdir=DIR [--num=16] [--steps=64] [--order=ancestral]
  vmd-jax compile --config=text8_vmd --topology=v5p-64 [--config.mesh.fsdp=8] \
      [--nosampler] [--json=FILE]   (needs vmd_jax[tpu]; ``trainer/compile.py``)

``python -m vmd_jax.main`` is ``vmd-jax train``; ``python -m vmd_jax CMD`` is
``vmd-jax CMD``. ``--config`` takes a config file's path or the name of one
packaged in ``vmd_jax/configs`` (``--config=text8_vmd``). Bad input (an unknown
or malformed config key, a missing file, a workdir that is a file) ends the
command with one line on stderr naming the culprit and exit code 2; so does a
workdir that ``evaluate`` or ``sample`` cannot read (no config.json, no intact
checkpoint: a newer corrupt step is skipped with a warning), and an argument or
input file the run cannot use (``load.BadInput``, checked before the checkpoint
is read); ``evaluate`` checks its output can be written before evaluating;
``compile`` refuses an unknown topology, a missing libtpu and a step that does not
fit the chips' memory (after printing its table). A run that ends
early says why in its last line: a workdir held by another run or a diverged
run exit 1, SIGTERM / SIGINT after saving exit 128 + the signal (143 / 130). Any
other uncaught exception prints its traceback and ends the process at once
(exit 1), so no stuck thread keeps it alive.

Multi-host: pass ``--distributed`` on every process. ``jax.distributed.initialize``
finds the coordinator, the process count and this process's id by itself on TPU
pods and under SLURM; elsewhere set ``JAX_COORDINATOR_ADDRESS`` (host:port of
process 0), ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` on every process.
"""

from __future__ import annotations

import logging as std_logging
import os
import sys
import traceback

from absl import app, flags, logging

from vmd_jax.trainer import config as config_lib

PACKAGED_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "configs")
FLAGS = flags.FLAGS
HELP = ("--help", "-h", "-help")


class InputError(Exception):
  """Bad input from the command line: reported in one line, exit code 2."""


def say(line: str):
  """Writes ``line`` to stderr in one write, so that lines of processes that share
  the stream never interleave (``print`` writes the text and its newline apart)."""
  sys.stderr.flush()
  try:
    fd = sys.stderr.fileno()
  except (AttributeError, OSError):  # a stream in memory (io.UnsupportedOperation)
    sys.stderr.write(line + "\n")
  else:
    os.write(fd, (line + "\n").encode())


def fail(message: str, prog: str = "vmd-jax"):
  say(f"{prog}: error: {message}")
  sys.exit(2)


def resolve_config_path(value: str) -> str:
  """A config file's path (``path[:args]``), or a packaged config's name."""
  path, sep, args = value.partition(":")
  if os.path.isfile(path):
    return value
  name = os.path.basename(path)
  packaged = os.path.join(PACKAGED_CONFIGS, name if name.endswith(".py") else name + ".py")
  if os.path.isfile(packaged):
    return packaged + sep + args
  raise InputError(f"config file {path!r} not found (packaged configs: "
                   f"{', '.join(packaged_configs())})")


def packaged_configs() -> list[str]:
  """The names ``--config`` takes for the configs packaged in ``vmd_jax/configs``."""
  return sorted(f[:-3] for f in os.listdir(PACKAGED_CONFIGS)
                if f.endswith(".py") and not f.startswith("_"))


def check_overrides(argv: list[str]) -> list[str]:
  """Resolves ``--config`` in ``argv`` and checks every ``--config.KEY=...``
  against that config, before ml_collections sees them; returns the new argv."""
  argv = list(argv)
  given = [i for i, arg in enumerate(argv) if arg.startswith("--config=")]
  index = given[-1] if given else None  # the last one wins, as in absl
  if index is None:
    if any(arg in HELP for arg in argv):
      return argv
    raise InputError(f"--config is required: a config file or one of the packaged configs "
                     f"({', '.join(packaged_configs())})")
  resolved = resolve_config_path(argv[index].split("=", 1)[1])
  argv[index] = f"--config={resolved}"
  path, _, args = resolved.partition(":")
  try:
    config = config_lib.load_config_file(path, *([args] if args else []))
  except Exception as e:  # a broken config file: its own error, in one line
    raise InputError(f"config file {path}: {type(e).__name__}: {e}") from e
  for arg in argv:
    if arg.startswith("--config.") and "=" in arg:
      key = arg[len("--config."):].split("=", 1)[0]
      if key in config_lib.MOVED_KEYS:  # data.synthetic: a group now
        raise InputError(config_lib.moved_key_message(key))
      node, walked = config, []
      for part in key.split("."):
        if not hasattr(node, "keys") or part not in node.keys():
          raise InputError(config_lib.unknown_key_message(
              ".".join(walked + [part]), node.keys() if hasattr(node, "keys") else []))
        node = node[part]
        walked.append(part)
  return argv


def _run_ended(e: BaseException) -> int | None:
  """The exit code of a run's own ending (workdir held, diverged, stopped by a
  signal), or None for any other exception."""
  from vmd_jax.trainer import checkpoint, guard, lock, preemption, sweep, train
  if isinstance(e, (train.BadSetup, guard.TrainingDiverged, lock.WorkdirLocked,
                    preemption.RunStopped, sweep.SweepFailed, checkpoint.DiskFull)):
    return e.exit_code
  return None


def _exit_now(code: int):
  """Ends the process even if a library thread would keep it alive."""
  logging.flush()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)


def _flags_parser(argv):
  try:
    return FLAGS(argv)
  except flags.Error as e:
    fail(str(e), argv[0])


class _QuietLibraries:
  """Drops the INFO lines orbax and TensorFlow write for every checkpoint, and JAX's
  for each platform it probes and does not find (TPU, on every other machine)."""

  def filter(self, record):
    return record.levelno > std_logging.INFO or not any(
        s in record.pathname for s in ("/orbax/", "/tensorflow/", "/tensorstore/",
                                       "/jax/_src/xla_bridge.py"))


def _check_workdir(workdir: str):
  if not workdir.strip():
    raise InputError("--workdir is empty (an unset variable?); name a directory")
  if "://" not in workdir and os.path.exists(workdir) and not os.path.isdir(workdir):
    raise InputError(f"--workdir={workdir} is a file, not a directory")


def _train():
  import jax
  if FLAGS.distributed:
    jax.distributed.initialize(**distributed_args(os.environ))
  try:
    config = config_lib.validate(FLAGS.config)
    config_lib.check_platform(config, jax.devices()[0].platform)
  except ValueError as e:
    raise InputError(str(e)) from None
  try:
    import tensorboardX  # noqa: F401  (the run's summaries: trainer/summaries.py)
  except ImportError as e:
    raise InputError(f"training writes TensorBoard summaries through tensorboardX, which needs "
                     f"{e.name}: pip install 'vmd_jax[train]'") from None
  from vmd_jax.trainer import sweep, train
  logging.info("JAX %s: %d processes, %d devices (%s)", jax.__version__, jax.process_count(),
               jax.device_count(), jax.devices()[0].platform)
  if "runs" in config:
    sweep.run_sweep(config, FLAGS.workdir)
    say(f"vmd-jax train: results in {FLAGS.workdir}/table.md and {FLAGS.workdir}/<run>/"
        "eval.json, one workdir per run")
  else:
    train.train_and_evaluate(config, FLAGS.workdir)
    say(f"vmd-jax train: results in {FLAGS.workdir}/eval.json (checkpoints in "
        f"{FLAGS.workdir}/checkpoints; tensorboard --logdir={FLAGS.workdir})")


def distributed_args(environ) -> dict:
  """``jax.distributed.initialize`` arguments from JAX_NUM_PROCESSES and
  JAX_PROCESS_ID (JAX reads JAX_COORDINATOR_ADDRESS itself); the ones not set are
  left to JAX's cluster detection (TPU pods, SLURM)."""
  args = {}
  for name, arg in (("JAX_NUM_PROCESSES", "num_processes"), ("JAX_PROCESS_ID", "process_id")):
    if environ.get(name, "") != "":
      if not environ[name].isdigit():
        raise InputError(f"{name}={environ[name]!r} is not a non-negative integer")
      args[arg] = int(environ[name])
  return args


def _reading_a_workdir(command):
  """``command``, with a workdir or file it cannot read, or an argument the run
  cannot use (``load.BadInput``, raised where the inputs are read), as ``InputError``."""
  from vmd_jax.trainer.checkpoint import CheckpointError
  from vmd_jax.trainer.load import BadInput
  try:
    return command()
  except (CheckpointError, FileNotFoundError, BadInput) as e:
    raise InputError(str(e)) from None


def _evaluate():
  import json
  from vmd_jax.trainer.evaluate import OutputNotWritten, default_output, evaluate_workdir
  output = FLAGS.output or default_output(FLAGS.data, FLAGS.settings, FLAGS.judge)
  try:
    result = _reading_a_workdir(lambda: evaluate_workdir(FLAGS.workdir, FLAGS.data,
                                                         FLAGS.settings, output,
                                                         FLAGS.judge))
  except OutputNotWritten as e:  # the results on stdout, not lost
    print(json.dumps(e.result, indent=2, sort_keys=True), flush=True)
    raise InputError(f"{e} (the results are on stdout)") from None
  print(json.dumps(result, indent=2, sort_keys=True), flush=True)  # the output file's
  say(f"vmd-jax evaluate: results in {FLAGS.workdir}/{output}")


def _sample():
  from vmd_jax.trainer.sample import sample_workdir
  print(_reading_a_workdir(lambda: sample_workdir(
      FLAGS.workdir, num=FLAGS.num, steps=FLAGS.steps, order=FLAGS.order, seed=FLAGS.seed,
      prior=FLAGS.prior, temperature=FLAGS.temperature, puzzles=FLAGS.puzzles)))


def _define_config_flag(argv):
  """--config (a file or a packaged config's name) and its --config.x=y overrides."""
  from ml_collections import config_flags
  argv = check_overrides(argv)
  config_flags.DEFINE_config_file("config", None, "Experiment config file or name.",
                                  lock_config=True)
  return argv


def _define_train_flags(argv):
  argv = _define_config_flag(argv)
  flags.DEFINE_string("workdir", None, "Directory (or gs:// URL) for checkpoints, metrics "
                      "and eval.json.", required=True)
  flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first.")
  return argv


def _compile():
  from vmd_jax.trainer import compile as compile_lib, io
  try:
    config = config_lib.validate(FLAGS.config)
    rows = compile_lib.compile_config(config, FLAGS.topology, FLAGS.sampler)
  except ValueError as e:  # BadTopology, DoesNotFit from XLA, a bad config or mesh
    raise InputError(str(e)) from None
  print(f"{FLAGS.topology} ({compile_lib.topology_name(FLAGS.topology)}): bytes and FLOPs "
        "per chip per call; seconds and MFU are XLA's estimates", flush=True)
  print(compile_lib.format_table(rows), flush=True)
  if FLAGS.json:
    io.write_json(io.as_path(FLAGS.json),
                  {"topology": FLAGS.topology, "rows": [r.to_dict() for r in rows]})
  for row in rows:
    try:
      compile_lib.check_fits(row, config)
    except compile_lib.DoesNotFit as e:
      raise InputError(str(e)) from None


def _define_compile_flags(argv):
  argv = _define_config_flag(argv)
  flags.DEFINE_string("topology", None, "TPU topology: v5p:2x4x4, v5e:4x4, or a slice name "
                      "such as v5p-64, v4-8, v5e-16.", required=True)
  flags.DEFINE_bool("sampler", True, "Also compile the sampler of the first eval setting.")
  flags.DEFINE_string("json", None, "Also write the rows to this JSON file.")
  return argv


def _define_evaluate_flags(argv):
  flags.DEFINE_string("workdir", None, "A trained vmd_jax workdir.", required=True)
  flags.DEFINE_string("data", None, "Evaluation file: a Sudoku CSV or a .npy table "
                      "(the dataset's use_eval_file).")
  flags.DEFINE_string("settings", None, "ORDER:NFE pairs, e.g. top_prob:5,top_prob_margin:5.")
  flags.DEFINE_string("output", None, "Output JSON name inside the workdir (default "
                      "eval_<data stem>_<settings>[_judged].json, or eval_latest.json; "
                      "never the training's eval.json).")
  flags.DEFINE_string("judge", None, "Workdir of an AR judge (configs/text8_judge.py): "
                      "scores every setting's samples (judge bits per character, unigram "
                      "entropy, repeated 4-grams) and real windows for reference.")
  return argv


def _define_sample_flags(argv):
  flags.DEFINE_string("workdir", None, "A trained vmd_jax workdir.", required=True)
  flags.DEFINE_integer("num", 16, "Number of samples.", lower_bound=1)
  flags.DEFINE_integer("steps", 0, "Network calls in total (NFE); 0: the sequence length.",
                       lower_bound=0)
  flags.DEFINE_string("order", "ancestral", "Sampling order (vmd_jax.sampling.ORDERS).")
  flags.DEFINE_integer("seed", 0, "PRNG seed.", lower_bound=0)
  flags.DEFINE_enum("prior", "run", ["run", "standard_normal", "mixture", "conditional"],
                    "VMD: the latent's prior (run: the one it trained with, conditional "
                    "p(z_b | x^{<b}) or N(0, I); mixture: the run's fitted prior.npz).")
  flags.DEFINE_float("temperature", 1.0, "Softmax temperature; 0 is greedy.", lower_bound=0.0)
  flags.DEFINE_string("puzzles", None, "Sudoku: a CSV whose first --num puzzles are solved.")
  return argv


COMMANDS = {"train": (_define_train_flags, _train),
            "evaluate": (_define_evaluate_flags, _evaluate),
            "sample": (_define_sample_flags, _sample),
            "compile": (_define_compile_flags, _compile)}
# command: (its arguments, what it does), for --help
USAGE = {
    "train": ("--config=CONFIG --workdir=DIR [--config.KEY=VALUE ...]",
              "Train a config and evaluate it: checkpoints, TensorBoard events and eval.json "
              "in the workdir; run it again to resume."),
    "evaluate": ("--workdir=DIR [--settings=ORDER:NFE,...] [--data=FILE] [--judge=DIR]",
                 "Evaluate a trained run's newest intact checkpoint (bound and samples) "
                 "into eval_<what>.json; the training's eval.json is never overwritten."),
    "sample": ("--workdir=DIR [--num=16] [--steps=NFE] [--order=ORDER]",
               "Draw samples from a trained run and print them."),
    "compile": ("--config=CONFIG --topology=TOPOLOGY [--config.KEY=VALUE ...]",
                "Compile a config's train step and sampler ahead of time for a TPU "
                "topology on this host (vmd_jax[tpu]): per-chip bytes, FLOPs, estimated "
                "step time."),
}


def command_help(command: str, own_flags) -> str:
  """``vmd-jax COMMAND --help``: the command's own flags first."""
  args, what = USAGE[command]
  lines = [f"usage: vmd-jax {command} {args}", "", what, "", "flags:"]
  for flag in own_flags:
    name = f"--[no]{flag.name}" if flag.boolean else f"--{flag.name}"
    default = "" if flag.default is None else f" (default: {flag.default!r})"
    lines.append(f"  {name}: {flag.help}{default}")
  if any(flag.name == "config" for flag in own_flags):
    lines += ["", "--config.KEY=VALUE overrides one field of the config "
              "(--config.train.num_steps=100).",
              f"packaged configs: {', '.join(packaged_configs())}"]
  lines += ["", "--helpfull also lists absl's and JAX's flags."]
  return "\n".join(lines)


def usage() -> str:
  """``vmd-jax --help``."""
  width = max(map(len, COMMANDS))
  lines = ["usage: vmd-jax COMMAND [--flags]   (vmd-jax COMMAND --help: its flags)", "",
           "commands:"]
  lines += [f"  {name:<{width}}  {USAGE[name][1]}" for name in COMMANDS]
  lines += ["", "  --version  print the version"]
  return "\n".join(lines)


def run_command(command: str, argv: list[str]):
  """Runs ``command`` with absl ``argv`` (argv[0] the program name)."""
  define, main = COMMANDS[command]
  try:
    before = set(FLAGS)
    argv = define(argv)
    if any(arg in HELP for arg in argv[1:]):
      print(command_help(command, [FLAGS[name] for name in FLAGS if name not in before]))
      sys.exit(0)

    def guarded(args):
      from vmd_jax.trainer import checkpoint
      checkpoint.drop_abandoned_reads()
      logging.get_absl_handler().addFilter(_QuietLibraries())  # every command's log
      try:  # every command takes flags only, and all but compile a --workdir
        if len(args) > 1:
          raise InputError(f"unexpected arguments: {args[1:]}")
        if "workdir" in FLAGS:
          _check_workdir(FLAGS.workdir)
        return main()
      except InputError as e:
        fail(str(e), argv[0])
      except SystemExit:
        raise
      except BaseException as e:  # pylint: disable=broad-except
        code = _run_ended(e)
        if code is not None:
          prefix = "" if code > 128 else "error: "
          say(f"{argv[0]}: {prefix}{e}")
          _exit_now(code)  # not sys.exit: the interpreter's shutdown with TensorFlow's,
          # orbax's or XLA's threads still running can crash (exit 139) or hang
        traceback.print_exc()
        _exit_now(130 if isinstance(e, KeyboardInterrupt) else 1)
    app.run(guarded, argv=argv, flags_parser=_flags_parser)
  except InputError as e:
    fail(str(e), argv[0])


def run(argv: list[str] | None = None):
  """``vmd-jax COMMAND ...``: the console script."""
  argv = sys.argv if argv is None else argv
  if argv[1:2] and argv[1] in HELP + ("help",):
    print(usage())
    sys.exit(0)
  if argv[1:2] == ["--version"]:
    import vmd_jax
    print(f"vmd-jax {vmd_jax.__version__}")
    sys.exit(0)
  if len(argv) < 2 or argv[1] not in COMMANDS:
    fail(f"usage: vmd-jax {{{'|'.join(COMMANDS)}}} [--flags]; got {argv[1:2] or 'nothing'} "
         "(vmd-jax --help lists the commands)")
  run_command(argv[1], [f"vmd-jax {argv[1]}"] + argv[2:])
