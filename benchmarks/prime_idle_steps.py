"""Idle-step ratio of the ancestral sampler under partial masking (MDM-Prime).

An idle step changes no digit of x_t, so a network call there is wasted (or
skipped by ``skip_idle``). Which digits the ancestral sampler reveals at each
step does not depend on the network: from a fully masked start each of the N l
digits is revealed at step i with probability (alpha(t_{i+1}) - alpha(t_i)) /
(1 - alpha(t_i)) if still masked, all remaining ones at the last step. So the
ratio depends on N l and the grid only, not on V or the model. Reported:

- ``exact``: ``expected_idle_ratio`` (closed form, (1/T) sum_i (1 - q_i)^(N l));
- ``simulated``: mean and standard error over ``--num_sequences`` sequences of
  ``ancestral_idle_steps`` (the reveal process alone);
- ``sampler`` (V = 27 only, cheap on a CPU): ``prime.sample(..., return_idle=True)``
  with a zero-logit denoiser, the full sampler, whose idle count must agree.

Paper (Chao et al. 2025, OpenWebText, N = 1024, stated T = 1000): MDLM (l = 1)
36.77%, l = 2 13.52%, l = 4 1.83%, l = 6 0.25%. These are (1 - 1/T)^(N l) with
T = N = 1024 steps to four digits (close to exp(-l), but not to four digits), so both T = 1000 and T = 1024 are run
(the full sampler at the first T only).

  python benchmarks/prime_idle_steps.py --output=benchmarks/results_prime_idle.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform

import jax
import jax.numpy as jnp
import numpy as np

from vmd_jax import prime
from vmd_jax.schedules import get_schedule, time_grid


def ancestral_idle_steps(key, batch_size: int, num_units: int, num_steps: int, schedule,
                         grid: str = "linear"):
  """Idle steps of the ancestral sampler from a fully masked start, int32 [B].

  Which digits the ancestral sampler reveals at each step does not depend on the
  network, so this simulates only that: ``num_units`` = N l digits, each revealed
  at step i with probability (alpha(t_{i+1}) - alpha(t_i)) / (1 - alpha(t_i)) if
  still masked (all at the last step); a step is idle when none is revealed.
  """
  times = time_grid(num_steps, grid)

  def body(i, carry):
    masked, idle = carry
    alpha_t, alpha_s = schedule.alpha(times[i]), schedule.alpha(times[i + 1])
    p = jnp.where(i == num_steps - 1, 1.0, (alpha_s - alpha_t) / (1.0 - alpha_t))
    u = jax.random.uniform(jax.random.fold_in(key, i), masked.shape)
    reveal = masked & (u < p)
    return masked & ~reveal, idle + (~jnp.any(reveal, axis=-1)).astype(jnp.int32)

  init = (jnp.ones((batch_size, num_units), bool), jnp.zeros((batch_size,), jnp.int32))
  return jax.lax.fori_loop(0, num_steps, body, init)[1]


def expected_idle_ratio(num_units: int, num_steps: int, schedule, grid: str = "linear") -> float:
  """E[idle steps] / T of the ancestral sampler from a fully masked start, exactly.

  A digit's reveal step is independent of the others': it is revealed at step
  i < T-1 with probability q_i = (alpha(t_{i+1}) - alpha(t_i)) / (1 - alpha(1)),
  so P(step i idle) = (1 - q_i)^(N l) (the last step is idle iff every digit was
  revealed before it).
  """
  a = np.asarray(schedule.alpha(time_grid(num_steps, grid)), np.float64)
  q = (a[1:] - a[:-1]) / (1.0 - a[0])
  idle = (1.0 - q[:-1]) ** num_units
  before_last = np.sum(q[:-1])
  last = before_last**num_units
  return float((np.sum(idle) + last) / num_steps)


SETTINGS = (("owt", 50257, 1024), ("text8", 27, 256))
PAPER = {("owt", 1): 0.3677, ("owt", 2): 0.1352, ("owt", 4): 0.0183, ("owt", 6): 0.0025}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num_steps", type=int, nargs="+", default=[1000, 1024])
  parser.add_argument("--num_sequences", type=int, default=16)
  parser.add_argument("--digits", type=int, nargs="+", default=[1, 2, 4, 6])
  parser.add_argument("--schedule", default="linear")
  parser.add_argument("--grid", default="linear")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--output", default="benchmarks/results_prime_idle.json")
  args = parser.parse_args()

  schedule = get_schedule(args.schedule)
  rows = []
  key = jax.random.key(args.seed)
  for num_steps, name, vocab_size, length in [
      (t, *s) for t in args.num_steps for s in SETTINGS]:
    for num_digits in args.digits:
      code = prime.DigitCode(vocab_size, num_digits)
      units = length * num_digits
      exact = expected_idle_ratio(units, num_steps, schedule, args.grid)
      key, sim_key, sample_key = jax.random.split(key, 3)
      sim = np.asarray(ancestral_idle_steps(
          sim_key, args.num_sequences, units, num_steps, schedule, args.grid)) / num_steps
      row = {"setting": name, "vocab_size": vocab_size, "length": length,
             "num_digits": num_digits, "base": code.base, "num_steps": num_steps,
             "exact": exact, "simulated": float(sim.mean()),
             "simulated_se": float(sim.std(ddof=1) / math.sqrt(len(sim))),
             "paper": PAPER.get((name, num_digits))}
      if vocab_size <= 1000 and num_steps == args.num_steps[0]:
        zero = lambda x_t, t, v=vocab_size: jnp.zeros(x_t.shape[:2] + (v,))
        x_init = jnp.full((args.num_sequences, length, num_digits), code.mask_id, jnp.int32)
        _, idle = jax.jit(lambda k: prime.sample(
            zero, k, x_init, num_steps, schedule, code, grid=args.grid,
            return_idle=True))(sample_key)
        ratio = np.asarray(idle) / num_steps
        row["sampler"] = float(ratio.mean())
        row["sampler_se"] = float(ratio.std(ddof=1) / math.sqrt(len(ratio)))
      rows.append(row)
      paper = f"{row['paper']:.2%}" if row["paper"] is not None else "-"
      sampler = f"{row['sampler']:.2%}" if "sampler" in row else "-"
      print(f"T={num_steps:<5d} {name:6s} V={vocab_size:<6d} N={length:<5d} l={num_digits} b={code.base:<6d} "
            f"exact {exact:7.2%}  simulated {row['simulated']:7.2%} "
            f"(se {row['simulated_se']:.2%})  sampler {sampler:>7s}  paper {paper}", flush=True)

  out = {"schedule": schedule.name, "eps": schedule.eps, "grid": args.grid,
         "num_steps": args.num_steps, "num_sequences": args.num_sequences,
         "seed": args.seed, "device": str(jax.devices()[0]), "platform": platform.platform(),
         "rows": rows}
  with open(args.output, "w") as f:
    json.dump(out, f, indent=2)
  print(f"wrote {args.output}")


if __name__ == "__main__":
  main()
