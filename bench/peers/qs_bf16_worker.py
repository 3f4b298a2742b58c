"""quickstudy's bfloat16 mode, used as its README says: the same meta-step as ``quickstudy_worker`` under
``torch.autocast(device, dtype=torch.bfloat16)`` (what ``Trainer(precision="bfloat16")`` /
``train.precision: bfloat16`` does), device = the batch's device type ("cpu" or "cuda"). Weights, optimizer
state, batch-norm statistics and losses stay in float32; convolutions and matrix products run in bfloat16
(AVX-512 BF16 on CPUs that have it; tensor cores on the GPU)."""

from __future__ import annotations

import torch

from bench.peers import quickstudy_worker

LIBRARY = "quickstudy (bfloat16)"
SUPPORTS = quickstudy_worker.SUPPORTS
MODELS = quickstudy_worker.MODELS
NOTES = "quickstudy defaults under torch.autocast(device, bfloat16) (Trainer precision='bfloat16')"
DETAILS = quickstudy_worker.DETAILS
version = quickstudy_worker.version


def build(cell, batch, dtype):
    if dtype != torch.float32:
        raise ValueError("the bfloat16 mode autocasts a float32 model; run it without --float64")
    float32_step, params = quickstudy_worker.build(cell, batch, dtype)
    device_type = batch[0].device.type

    def step():
        with torch.autocast(device_type, dtype=torch.bfloat16):
            float32_step()

    return step, params
