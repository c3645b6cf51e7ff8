"""Pure PyTorch modules, one file per model: no I/O, no globals."""
