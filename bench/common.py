"""Shared by the benchmark scripts: timing with device sync, peak memory, the printed table."""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass

import torch


@dataclass
class Row:
    stage: str
    seconds: float
    rate: str
    peak: str


def peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB (GPU)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (RSS, process peak)"


def timed(device: torch.device, work):
    """(result, seconds) of work(), with the GPU's peak-memory counter reset before and synced after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    result = work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, time.perf_counter() - start


def print_table(rows: list[Row], heading: str = "stage", width: int = 44) -> None:
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU only"
    print(f"torch {torch.__version__}, {name}, {torch.get_num_threads()} CPU threads")
    print(f"{heading:<{width}} {'time':>9} {'rate':>16}  peak memory")
    for row in rows:
        print(f"{row.stage:<{width}} {row.seconds:>8.3f}s {row.rate:>16}  {row.peak}")


def print_rows(headers: list[str], rows: list[list[str]]) -> None:
    """A plain table: each column as wide as its widest cell, numbers right-aligned, the last column free."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    for line in [headers, *rows]:
        cells = []
        for index, (cell, width) in enumerate(zip(line, widths, strict=True)):
            text = str(cell)
            if index == len(line) - 1:
                cells.append(text)
            elif index < 2:
                cells.append(text.ljust(width))
            else:
                cells.append(text.rjust(width))
        print("  ".join(cells).rstrip())
