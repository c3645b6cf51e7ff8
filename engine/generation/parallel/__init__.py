"""One video over several devices: classifier-free-guidance parallel x sequence parallel stage 2.

`plan` (torch-free: the CLI and the daemon parse `--parallel` with it), `group` (the ranks' process
groups and the few collectives they use), `network` (the DiT call split across them), `ranks` (the
helper ranks: the engine starts them, watches them and stops them; `python -m
engine.generation.parallel.rank` is one of them).
"""
