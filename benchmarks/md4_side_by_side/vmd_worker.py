"""vmd_jax side of the md4 side-by-side harness (run from the project root).

  python vmd_worker.py train|sample [dropout] [mlp_ratio]

The shared harness's ``vmd_worker.py`` adapted to the trainer package's API
(``trainer.config.load_config_file``, ``trainer.build.build_model``,
``trainer.state.make_optimizer / init_state``, ``trainer.train.make_train_step``);
``worker_common`` (sizes, timing, the matmul peak) is read from the shared
harness at ``MD4_BENCH`` so both sides measure alike.
"""
import os, sys, time
if "MD4_BENCH" not in os.environ:
  sys.exit("vmd_worker.py: set MD4_BENCH to the md4 harness's folder (worker_common.py)")
sys.path.insert(0, os.environ["MD4_BENCH"])
from worker_common import B, N, V, LAYERS, HEADS, WIDTH, emit, flops_of, timed, Peak, serve
import jax, jax.numpy as jnp, numpy as np
from vmd_jax.trainer import build, config as config_lib, state as vstate, train as vtrain

mode = sys.argv[1]
dropout = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
mlp_ratio = float(sys.argv[3]) if len(sys.argv) > 3 else None

c = config_lib.load_config_file(
    os.path.join(os.environ.get("VMD_ROOT", "."), "vmd_jax/configs/text8_md4.py"))
c.model.width, c.model.depth, c.model.num_heads = WIDTH, LAYERS, HEADS
c.model.dropout = dropout
if mlp_ratio is not None:
  c.model.mlp_ratio = mlp_ratio
c.train.batch_size = B
config_lib.validate(c)
assert c.diffusion.schedule == "linear" and c.diffusion.loss_steps == 0 and c.model.dtype == "float32"
model = build.build_model(c, V, N)
tx = vstate.make_optimizer(c.train)
t0 = time.perf_counter()
example = np.zeros((B, N), np.int32)
state = jax.jit(lambda k: vstate.init_state(model, tx, k, example))(jax.random.key(c.seed))
n_params = int(sum(x.size for x in jax.tree.leaves(state.params)))
handlers = {}

if mode == "train":
  step = vtrain.make_train_step(model, tx, c.seed, c.train.ema_decay)
  x0 = jnp.asarray(np.random.RandomState(0).randint(0, V, (B, N)), jnp.int32)
  compiled = jax.jit(step, donate_argnums=(0,)).lower(state, x0).compile()
  flops = flops_of(compiled)
  box = [state]
  def one():
    box[0], m = compiled(box[0], x0)
    return box[0], m
  first, _ = timed(one)
  peak = Peak()
  def do_train(arg):
    return {"times": [timed(one)[0] for _ in range(int(arg))]}
  handlers = {"train": do_train, "peak": lambda a: {"times": peak.run(int(a))}}
  emit(ready=True, side="vmd", params=n_params, flops_per_step=flops, peak_flops=peak.flops,
       setup_s=time.perf_counter() - t0, first_step_s=first, jax=jax.__version__,
       dropout=dropout, mlp_ratio=c.model.mlp_ratio, grad_clip=c.train.grad_clip,
       weight_decay=c.train.weight_decay)

elif mode == "sample":
  params = state.params
  x_init = jnp.full((B, N), V, jnp.int32)   # all masks
  grid = c.eval.grid                        # "cosine", md4's text8 sampling grid
  fns = {}
  def build(name):
    order, steps = name.split(":")
    def gen(p, key):
      return model.sample(p, key, x_init, int(steps), order, grid=grid)  # (x, nfe)
    t = time.perf_counter()
    f = jax.jit(gen).lower(params, jax.random.key(0)).compile()
    compile_s = time.perf_counter() - t
    fns[name] = f
    return {"compile_s": compile_s}
  calls = [0]
  def run(name):
    calls[0] += 1
    dt, (_, nfe) = timed(fns[name], params, jax.random.key(calls[0]))
    return {"time_s": dt, "nfe": int(nfe), "key": calls[0]}
  fwd = jax.jit(lambda p, z: model.denoise_fn(p)(z, jnp.full((B,), 0.5, jnp.float32)))
  fwd_c = fwd.lower(params, x_init).compile()
  fwd_z = x_init
  def do_fwd(arg):   # one network call on an all-mask batch, outside any loop
    return {"times": [timed(fwd_c, params, fwd_z)[0] for _ in range(int(arg))]}
  handlers = {"compile": build, "sample": run, "fwd": do_fwd}
  emit(ready=True, side="vmd", params=n_params, fwd_flops=flops_of(fwd_c), sampling_grid=grid,
       jax=jax.__version__)

serve(handlers)
