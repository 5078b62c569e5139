"""The run config: one typed, validated object built from YAML, flags and `--set key=value` overrides.

Defaults live here and nowhere else; `tunesmith init`, the key reference in docs/configuration.md and the web
page's form are generated from these classes (`config.reference`), so documentation cannot drift from the code.
"""

from .run import (SECTIONS, UNBUILDABLE, RepeatedKey, RunConfig, TooLarge, apply_override, build_config, check_block_size,
                  load_config, load_yaml, parse_override, raw_config, read_config_file, read_yaml_leniently)
from .sections import (DEFAULT_MODEL, PROBE_WORDS, TASK_FILE_SUFFIXES, CleanConfig, DataConfig, DataSource, ModelConfig,
                       MonitorConfig, OutputConfig, TrainConfig, benchmark_is_path)
from .use_cases import ChatConfig, ClassifyConfig, DistillConfig, GrpoConfig, PreferenceConfig, RewardSpec

__all__ = ["DEFAULT_MODEL", "PROBE_WORDS", "SECTIONS", "TASK_FILE_SUFFIXES", "ChatConfig", "ClassifyConfig",
           "CleanConfig", "DataConfig", "DataSource", "DistillConfig", "GrpoConfig", "ModelConfig", "MonitorConfig", "OutputConfig", "PreferenceConfig",
           "RepeatedKey", "RewardSpec", "UNBUILDABLE", "RunConfig", "TooLarge", "TrainConfig", "apply_override", "benchmark_is_path", "build_config", "check_block_size",
           "load_config", "load_yaml", "parse_override", "raw_config", "read_config_file", "read_yaml_leniently"]
