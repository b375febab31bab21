"""An autoregressive judge of text8 samples: block diffusion with L' = 1.

Block diffusion with ``diffusion.block_size = 1`` is exactly an autoregressive
model: each block is one character, generated given the clean prefix
(BD3-LM, Arriola et al. 2025, arXiv:2503.09573). Samples' generative bits per
character under such a model is the field's sample metric (MDLM, BD3-LM and MD4
score samples with an autoregressive model); ``vmd-jax evaluate --judge=WORKDIR``
scores every sampling setting of another text8 run with this one
(``vmd_jax.judge``, docs/results.md "text8").

The recipe is ``configs/text8_bd3.py``'s (``configs/text8_md4.py``'s data,
model and optimiser) with two changes that make the one-token block an AR model:

* ``model.time_conditioning = False``. A masked one-token block has nothing of
  itself left to condition on, so the best prediction at any t is
  p(x^n | x^{<n}), the same for all t. Without t the network outputs exactly that
  one conditional, and the block NELBO (its test BPC in eval.json) is an unbiased
  estimate of the AR loss sum_n -log p(x^n | x^{<n}) (times 1 - 2 eps, plus
  eps-sized boundary terms): E_t[w(t) (1 - alpha(t))] = int -alpha'(t) dt.
* ``diffusion.train_mask_rate = U[0.99, 1]``. With one token per block, the
  clipped rate only decides how often the token is masked; an unmasked token
  contributes no loss and no gradient, and a masked one at time t weighs
  -alpha'(t) / (1 - alpha(t)). Rates near 1 mask the token in >= 99% of draws at
  weight ~1: the training loss is then the plain AR cross-entropy, without the
  unclipped rate's 1/t weights of rarely masked tokens (whose variance diverges
  logarithmically). Unbiased either way, since the network ignores t.

Sampling: ``ancestral:256`` is one step per block, i.e. exact ancestral AR
sampling (each character drawn from p(x^n | x^{<n})).

  python -m vmd_jax.main --config=configs/text8_judge.py --workdir=runs/text8_judge \
      --config.data.text8.path=/data/text8.zip
  vmd-jax evaluate --workdir=runs/text8_md4 --judge=runs/text8_judge

The judge must be trained on the same text (vocabulary and data source) as the
runs it scores; its windows may be as long as or longer than theirs.
"""

from vmd_jax.configs import text8_bd3


def get_config():
  c = text8_bd3.get_config()
  c.diffusion.block_size = 1               # one character per block: autoregressive
  c.diffusion.train_mask_rate_min = 0.99   # mask the one token (nearly) always
  c.diffusion.train_mask_rate_max = 1.0
  c.model.time_conditioning = False        # p(x^n | x^{<n}) does not depend on t
  c.eval.settings = "ancestral:256"        # one step per block: exact AR sampling
  return c
