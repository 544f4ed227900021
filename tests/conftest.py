"""Shared pytest configuration: one thread for torch (2-core CI, deterministic timings)."""

import torch

torch.set_num_threads(1)
