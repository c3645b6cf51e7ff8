"""A job as the GPU runs it: both stages, progress clocks, outputs, video writing, and length rules.

Only `lengths` is torch-free (clients import it); everything else here loads torch.
"""
