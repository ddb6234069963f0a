"""Every objective by name, and which one trains a model type.

The table lists the objective classes of this package; its config sections (and the default
objective of each model type) are in ``pretrain.config.objectives``, which a test keeps in step
with this table. A new objective adds its class to the table and its section to the config.
"""

from __future__ import annotations

from typing import Any

from pretrain.objectives.base import Objective
from pretrain.objectives.classification import ClassificationObjective
from pretrain.objectives.multimodal import MultimodalAutoencodingObjective
from pretrain.objectives.text import ARObjective, MLMObjective
from pretrain.objectives.vision import ImageClassificationObjective, OpticalFlowObjective

OBJECTIVES: dict[str, type[Objective]] = {
    cls.name: cls
    for cls in (
        MLMObjective,
        ARObjective,
        MultimodalAutoencodingObjective,
        ClassificationObjective,
        ImageClassificationObjective,
        OpticalFlowObjective,
    )
}


def objective_for_model(model_type: str) -> str:
    """The objective that trains ``model_type``."""
    for name, cls in OBJECTIVES.items():
        if model_type in cls.model_types:
            return name
    raise KeyError(f"no objective trains model type {model_type!r}")


def build_objective(cfg: Any) -> Objective:
    """The objective of ``cfg.objective.name``, built from the run's config."""
    return OBJECTIVES[cfg.objective.name](cfg)


def check_data(cfg: Any) -> None:
    """Check ``cfg.data`` against the model (raises ConfigError naming the key); the check is
    the objective section's (``pretrain.config.objectives``), which ``check_inputs`` also runs."""
    cfg.objective.check_data(cfg)
