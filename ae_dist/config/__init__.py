"""The configuration: one typed tree of frozen dataclasses, read from YAML and dotted overrides.

Owns: the schema and its validation (`schema`), config files and the packaged experiments
(`files`), the conversion of each field's declared type (`types`), run.dir template fields
(`templates`), and the command lines of the entry points (`cli`). Imports only
`ae_dist.errors`: every other layer reads the config, the config reads none of them.
Outside this package, import the names below from ``ae_dist.config``; inside it, modules
import their siblings by name.
"""

from ae_dist.config.files import DEFAULT_CONFIG, PACKAGED_CONFIGS, find_config
from ae_dist.config.schema import (
    CheckpointConfig,
    Config,
    DataConfig,
    DistConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
    WandbConfig,
    build_config,
    check_world_size,
    dump_yaml,
    from_dict,
    leaf_fields,
    load_config,
    load_saved,
    parse_overrides,
    path_keys,
    resolve_paths,
    suggest_key,
    to_dict,
    to_flat,
    validate,
)
from ae_dist.config.types import choices

__all__ = [
    "DEFAULT_CONFIG", "PACKAGED_CONFIGS", "CheckpointConfig", "Config", "DataConfig", "DistConfig", "ModelConfig",
    "OptimConfig", "RunConfig", "TrainConfig", "WandbConfig", "build_config", "check_world_size", "choices",
    "dump_yaml", "find_config", "from_dict", "leaf_fields", "load_config", "load_saved", "parse_overrides", "path_keys",
    "resolve_paths", "suggest_key", "to_dict", "to_flat", "validate",
]
