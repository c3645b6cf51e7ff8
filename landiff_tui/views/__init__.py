"""The tabs: one view per tab, each a client of the engine link."""
