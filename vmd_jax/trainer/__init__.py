"""The trainer: config, building, state, training, evaluation, checkpoints, I/O,
loading and the command line (needs ``vmd_jax[train]``).

Dependencies flow one way: trainer -> data -> networks -> the pure math.
"""
