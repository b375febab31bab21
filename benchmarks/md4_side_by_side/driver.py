"""Interleaved md4 / vmd_jax measurements (system python; the workers use their venvs).

The md4 harness's driver (its folder in ``MD4_BENCH``, required) with the
vmd_jax worker taken from this folder; the md4 worker stays the shared one.

  python3 driver.py train  --rounds 6 --steps 2 --peak 3
  python3 driver.py sample --rounds 2 --configs ancestral:100 --vmd_configs first_hitting:256

Each side is one long-lived worker process under /usr/bin/time -v (peak RSS); both
compile first, then the driver alternates A (md4), B (vmd), A, B, ... per round.
"""
import argparse, json, os, statistics, subprocess, sys, time

HERE = os.path.dirname(os.path.abspath(__file__))
PY = {"md4": os.environ.get("MD4_PY", os.path.expanduser("~/.cache/md4venv/bin/python")),
      "vmd": os.environ.get("VMD_PY", os.path.abspath(".venv/bin/python"))}
if "MD4_BENCH" not in os.environ:  # the md4 side: md4_worker.py, worker_common.py
  sys.exit("driver.py: set MD4_BENCH to the folder of the md4 harness (md4_worker.py, "
           "worker_common.py)")
MD4_BENCH = os.path.abspath(os.environ["MD4_BENCH"])
WORKER = {"md4": f"{MD4_BENCH}/md4_worker.py", "vmd": f"{HERE}/vmd_worker.py"}
ENV = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
ENV.pop("XLA_FLAGS", None)       # same (default) XLA CPU settings for both sides
ENV.pop("JAX_ENABLE_X64", None)


def uptime():
  return open("/proc/loadavg").read().split()[:3]


class Worker:
  def __init__(self, side, mode, extra, outdir, tag):
    self.side = side
    self.timefile = f"{outdir}/{tag}_{side}.time.txt"
    self.err = open(f"{outdir}/{tag}_{side}.stderr.txt", "w")
    self.p = subprocess.Popen(
        ["/usr/bin/time", "-v", "-o", self.timefile, PY[side], WORKER[side], mode, *extra],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, text=True, env=ENV,
        cwd=os.getcwd())

  def read(self):
    while True:
      line = self.p.stdout.readline()
      if not line:
        raise RuntimeError(f"{self.side} worker died; see its stderr file")
      if line.startswith("{"):
        return json.loads(line)

  def ask(self, cmd):
    self.p.stdin.write(cmd + "\n"); self.p.stdin.flush()
    out = self.read()
    if "error" in out:
      raise RuntimeError(f"{self.side}: {out}")
    return out

  def close(self):
    self.ask("quit"); self.p.wait()
    rss = None
    for line in open(self.timefile):
      if "Maximum resident set size" in line:
        rss = int(line.split(":")[1]) / 1024.0
    return rss


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("mode", choices=["train", "sample"])
  ap.add_argument("--rounds", type=int, default=6)
  ap.add_argument("--steps", type=int, default=2)
  ap.add_argument("--peak", type=int, default=3)
  ap.add_argument("--configs", default="ancestral:100", help="both sides")
  ap.add_argument("--vmd_configs", default="", help="vmd only, timed once per round")
  ap.add_argument("--vmd_once", default="", help="vmd only, timed in round 0 only")
  ap.add_argument("--both_once", default="", help="both sides, timed in round 0 only")
  ap.add_argument("--fwd", type=int, default=0, help="sample mode: K single forwards per side per round")
  ap.add_argument("--md4_args", default="")
  ap.add_argument("--vmd_args", default="")
  ap.add_argument("--tag", default=None)
  args = ap.parse_args()
  tag = args.tag or args.mode
  outdir = os.path.abspath(os.environ.get("BENCH_OUT", "bench_out")); os.makedirs(outdir, exist_ok=True)
  rec = {"mode": args.mode, "args": vars(args), "load_start": uptime(), "rounds": []}
  w = {"md4": Worker("md4", args.mode, args.md4_args.split(), outdir, tag),
       "vmd": Worker("vmd", args.mode, args.vmd_args.split(), outdir, tag)}
  rec["ready"] = {s: w[s].read() for s in w}
  print(json.dumps(rec["ready"]), flush=True)
  both = [c for c in args.configs.split(",") if c]
  only_vmd = [c for c in args.vmd_configs.split(",") if c]
  once = [c for c in args.vmd_once.split(",") if c]
  both_once = [c for c in args.both_once.split(",") if c]
  if args.mode == "sample":
    rec["compile"] = {}
    for s in ("md4", "vmd"):
      for c in both + both_once + (only_vmd + once if s == "vmd" else []):
        rec["compile"][f"{s} {c}"] = w[s].ask(f"compile {c}")
    print(json.dumps(rec["compile"]), flush=True)
  for r in range(args.rounds):
    rd = {"load": uptime(), "t": time.strftime("%H:%M:%S")}
    if args.mode == "train":
      for s in ("md4", "vmd"):
        rd[f"{s} train"] = w[s].ask(f"train {args.steps}")["times"]
        rd[f"{s} peak"] = w[s].ask(f"peak {args.peak}")["times"]
    else:
      if args.fwd:
        for s in ("md4", "vmd"):
          rd[f"{s} fwd"] = w[s].ask(f"fwd {args.fwd}")["times"]
      for c in both:
        for s in ("md4", "vmd"):
          rd[f"{s} {c}"] = w[s].ask(f"sample {c}")
      for c in only_vmd + (once if r == 0 else []):
        rd[f"vmd {c}"] = w["vmd"].ask(f"sample {c}")
      for c in (both_once if r == 0 else []):
        for s in ("md4", "vmd"):
          rd[f"{s} {c}"] = w[s].ask(f"sample {c}")
    rd["load_end"] = uptime()
    rec["rounds"].append(rd)
    print(json.dumps(rd), flush=True)
  rec["peak_rss_mb"] = {s: w[s].close() for s in w}
  rec["load_end"] = uptime()
  json.dump(rec, open(f"{outdir}/{tag}.json", "w"), indent=1)
  print(json.dumps({"peak_rss_mb": rec["peak_rss_mb"], "load_end": rec["load_end"]}), flush=True)


if __name__ == "__main__":
  main()
