"""A job as the GPU runs it: both stages, progress clocks, outputs, video writing, and length rules.

Only `lengths` (clients import it) and `resume_point` (a starting engine reads checkpoints with it) are
torch-free; everything else here loads torch.
"""
