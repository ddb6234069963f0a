"""ZeRO-3 without a second copy of the weights when they already are fp32.

DeepSpeed's ZeRO-3 optimizer keeps the rank's partition of the weights twice: the model's
partition (``fp16_partitioned_groups_flat``, in the model's dtype) and the optimizer's master
copy (``fp32_partitioned_groups_flat``). It means to share them when the model is fp32 already,
but the test it uses, ``tensor.device == self.device``, compares a ``torch.device`` with the
accelerator's device *name* (a string), which is never equal, so fp32 training under ZeRO-3
allocates the master copy anyway: per rank ``5/N`` of the model's fp32 size in model state
(weights, master, gradients, two Adam moments) instead of ``4/N`` (measured: 0.63x of ZeRO-0 on
2 ranks instead of 0.50x; tools/bench_memory.py).

:func:`share_fp32_master` makes the master copy a view of the model's partition, which is what
DeepSpeed does when its test succeeds: the optimizer's parameter objects (and so its state and
``param_groups``) stay the same objects, only their storage is shared. DeepSpeed's copies between
the two (after each step, on checkpoint load) then copy a tensor onto itself.
"""

from __future__ import annotations

from typing import Any


def share_fp32_master(optimizer: Any) -> int:
    """Points ZeRO-3's fp32 master partitions at the model's partitions where both are the same
    dtype on the same device, freeing the duplicate; returns the bytes freed (0 if nothing to do:
    other ZeRO stages, bf16/fp16 models, offloaded or NVMe-swapped optimizer states)."""
    master = getattr(optimizer, "fp32_partitioned_groups_flat", None)
    model = getattr(optimizer, "fp16_partitioned_groups_flat", None)
    if master is None or model is None or getattr(optimizer, "offload_optimizer", False):
        return 0
    if getattr(optimizer, "params_in_nvme_and_cpu", False):
        return 0
    freed = 0
    for hp, lp in zip(master, model):
        if hp is lp or hp.numel() == 0:
            continue
        if hp.dtype != lp.dtype or hp.device != lp.device or hp.shape != lp.shape:
            continue
        if hp.untyped_storage().data_ptr() == lp.untyped_storage().data_ptr():
            continue
        lp.data.copy_(hp.data)  # they are equal at this point; keep the master's values exactly
        freed += hp.untyped_storage().nbytes()
        hp.data = lp.data
    return freed
