"""Configuration: typed experiment recipes (YAML/JSON) and DeepSpeed config checks."""
from .deepspeed import check_ds_config, inspect_ds_config, precision, read_ds_config, resolve_batch, zero_stage
from .experiment import (AdapterConfig, AnalysisConfig, GradConflictConfig, CleaningConfig, DataConfig, ExperimentConfig, LanguageConfig, MetaConfig,
                         MLMConfig, ModelConfig, NonFiniteConfig, SplitConfig, TrainConfig, VocabConfig, load_experiment,
                         recipe_path)
from .loader import ConfigError, apply_overrides, from_mapping, read_mapping, to_mapping

__all__ = [
    "AdapterConfig", "AnalysisConfig", "GradConflictConfig", "CleaningConfig", "ConfigError", "DataConfig", "ExperimentConfig", "LanguageConfig",
    "MLMConfig", "MetaConfig", "ModelConfig", "NonFiniteConfig", "SplitConfig", "TrainConfig", "VocabConfig", "apply_overrides",
    "check_ds_config", "from_mapping", "inspect_ds_config", "load_experiment", "precision", "read_ds_config",
    "read_mapping", "recipe_path", "resolve_batch", "to_mapping", "zero_stage",
]
