"""Typed configuration tree: YAML presets plus dotted ``key.sub=value`` overrides.

A run is described by one :class:`Config`: ``model`` (the model's typed config, by
``model.type``), ``objective`` (the objective's typed settings, by ``objective.name``), ``data``,
``optimizer``, ``trainer``, ``checkpoint``, ``logging``, ``glue`` and ``probes``. It is built and
validated once, by ``load_config``; ``--dry-run``, the trainer, export and GLUE read that object.

* ``schema``: the sections and :class:`Config`.
* ``objectives``: the objective sections and their pre-flight data checks.
* ``loading``: YAML, presets, overrides, type checks, ``check_inputs``, ``save_config``.
"""

from pretrain.config.errors import ConfigError
from pretrain.config.loading import (
    CONFIG_ROOT,
    _load_yaml,
    apply_overrides,
    check_inputs,
    config_digest,
    config_from_dict,
    find_preset,
    load_config,
    parse_override,
    save_config,
)
from pretrain.config.objectives import (
    OBJECTIVE_CONFIGS,
    ARObjectiveConfig,
    ClassificationObjectiveConfig,
    ImageClassificationObjectiveConfig,
    MLMObjectiveConfig,
    MultimodalObjectiveConfig,
    ObjectiveConfig,
    OpticalFlowObjectiveConfig,
    default_objective,
)
from pretrain.config.schema import (
    CheckpointConfig,
    Config,
    DataConfig,
    DataSourceConfig,
    GlueConfig,
    LoggingConfig,
    OptimizerConfig,
    ProbesConfig,
    TrainerConfig,
)

__all__ = [
    "CONFIG_ROOT",
    "OBJECTIVE_CONFIGS",
    "ARObjectiveConfig",
    "CheckpointConfig",
    "ClassificationObjectiveConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "DataSourceConfig",
    "GlueConfig",
    "ImageClassificationObjectiveConfig",
    "LoggingConfig",
    "MLMObjectiveConfig",
    "MultimodalObjectiveConfig",
    "ObjectiveConfig",
    "OpticalFlowObjectiveConfig",
    "OptimizerConfig",
    "ProbesConfig",
    "TrainerConfig",
    "_load_yaml",
    "apply_overrides",
    "check_inputs",
    "config_digest",
    "config_from_dict",
    "default_objective",
    "find_preset",
    "load_config",
    "parse_override",
    "save_config",
]
