"""Policy tests run torch on one thread: the suite runs beside other processes, and oversubscribed OpenMP threads
spin-wait (measured: 5x slower training with two threads on a loaded two-core machine)."""

from __future__ import annotations

import torch

torch.set_num_threads(1)
