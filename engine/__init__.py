"""LanDiff engine: everything that is not UI.

Kept import-light on purpose: `import engine` (or `engine.protocol`) must not import torch.
"""

__version__ = "0.1.0"
