"""On-device, batched augmentation for the vision objectives (``pretrain.objectives.vision``).

* ``geometry``: crops and flips as one batched ``affine_grid`` + ``grid_sample``, inside each
  image's valid region; torchvision's random-resized-crop boxes; centre crops.
* ``image``: classification (random resized crop + flip, centre crop, ImageNet normalisation,
  MixUp / CutMix); ``randaugment``: a batched RandAugment.
* ``flow``: optical-flow pairs (random scale and crop with the flow scaled alike, flip negating
  the flow's x, photometric jitter, frames to ``[-1, 1]``).

Every function takes its randomness from a ``torch.Generator`` on the CPU that the objective
seeds from the batch key, so a batch is a function of (seed, key) on any device.
"""
