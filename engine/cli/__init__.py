"""`landiff-engine`: the command line (in-process generation, the engine's client commands, weights)."""
