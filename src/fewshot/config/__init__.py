"""Configs: nested dicts of plain values, layered defaults < preset < file < flags < key=value.

Plain dicts (not dataclasses) because every field must be overridable from the command line
with dotted keys (`optim.lr=3e-4`) and the resolved result is saved verbatim as YAML in the
run directory. Unknown keys are refused so that a typo never silently does nothing.

One module per job; this package re-exports their names, so that `from fewshot.config import X` keeps working:
defaults (DEFAULTS, PRESETS), fields (what each field takes), yaml_io (reading config files), dotted (dotted keys,
key=value words), runfile (a run's config.yaml or the user's), recorded (the values a run chose itself),
changes (resume's comparison), validation (types and ranges), memory (MoCo's memory) and layering (resolve).
A test that replaces a name replaces it in the module that reads it (`fewshot.config.memory.memory_bytes`).
"""

from __future__ import annotations

from fewshot.config.changes import same_folders, same_recorded_path, same_weights_file, setting_changed
from fewshot.config.defaults import DEFAULTS, PRESETS
from fewshot.config.dotted import (deep_merge, flatten_dotted, get_dotted, parse_override, refuse_empty_value,
                                   set_dotted, with_defaults)
from fewshot.config.fields import (AUTO_OR_WHOLE, CHOICES, OPTIONAL, OPTIONAL_NULL, SAME_VALUE, TEXT, TEXT_LIST,
                                   FieldError, canonical_value, field_words, is_text_list)
from fewshot.config.layering import resolve
from fewshot.config.memory import (HEAD_WIDTH_GUESS, MOCO_MEMORY_CAP, check_moco_memory, memory_bytes, moco_bytes,
                                   moco_head_params)
from fewshot.config.recorded import (CHOSEN, CHOSEN_FIELDS, GIVEN_WEIGHTS, PER_INVOCATION, RECHOSEN, RECORDED,
                                     RUN_CHOSEN_FIELDS, RUN_TIME_FIELDS, TRANSIENT, rechosen_value,
                                     chosen_by_rule, chosen_in_file, chosen_record, file_settings, mark_rechosen,
                                     network_by_rule, note_chosen, note_rechosen, read_config_file, record_chosen,
                                     run_time_values, same_value, save_yaml, unknown_fields)
from fewshot.config.runfile import (RUN_FILES, RUN_SECTIONS, missing_run_sections, read_run_config,
                                    refuse_scalar_sections, written_by_run)
from fewshot.config.validation import (AT_LEAST, INTERVALS, MAX_BUDGET_MINUTES, POSITIVE, check_augmentation_lists,
                                       validate)
from fewshot.config.yaml_io import (MAX_DEPTH, MERGE_TAG, NULL_TAG, RECIPES, STR_TAG, TAG_WRITTEN, ConfigLoader,
                                    NotAMapping, config_data, deeper_than, find_config, keep_text_as_typed,
                                    load_yaml, load_yaml_or_none, one_read_per_file, read_yaml)

__all__ = [
    "AT_LEAST", "AUTO_OR_WHOLE", "CHOICES", "CHOSEN", "DEFAULTS", "HEAD_WIDTH_GUESS", "INTERVALS", "MAX_BUDGET_MINUTES",
    "MAX_DEPTH", "MERGE_TAG", "MOCO_MEMORY_CAP", "NULL_TAG", "OPTIONAL", "OPTIONAL_NULL", "PER_INVOCATION", "POSITIVE",
    "PRESETS", "RECHOSEN", "RECIPES", "RECORDED", "RUN_FILES", "RUN_SECTIONS", "RUN_TIME_FIELDS", "SAME_VALUE",
    "STR_TAG", "TAG_WRITTEN", "TEXT", "TEXT_LIST", "TRANSIENT", "ConfigLoader", "FieldError", "NotAMapping",
    "canonical_value", "check_augmentation_lists", "check_moco_memory", "chosen_by_rule", "chosen_in_file",
    "chosen_record", "config_data", "deep_merge", "deeper_than", "field_words", "file_settings", "find_config",
    "flatten_dotted", "get_dotted", "is_text_list", "keep_text_as_typed", "load_yaml", "load_yaml_or_none",
    "mark_rechosen", "memory_bytes", "missing_run_sections", "moco_bytes", "moco_head_params", "network_by_rule",
    "note_chosen", "note_rechosen", "one_read_per_file", "parse_override", "read_config_file", "read_run_config",
    "read_yaml", "record_chosen", "refuse_empty_value", "refuse_scalar_sections", "resolve", "run_time_values",
    "same_folders", "same_recorded_path", "same_value", "same_weights_file", "save_yaml", "set_dotted",
    "setting_changed", "unknown_fields", "validate", "with_defaults", "written_by_run",
    "CHOSEN_FIELDS", "GIVEN_WEIGHTS", "RUN_CHOSEN_FIELDS", "rechosen_value",
]
