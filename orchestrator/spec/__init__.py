"""What a sweep is asked to do: the spec's models, its loading, the search space, the objectives, and one trial's
whole configuration built from them."""

from orchestrator.spec.load import SpecError, apply_sets, load_spec, parse_spec, read_yaml
from orchestrator.spec.models import METHOD_KEY, PRESET_KEY, DataSpec, SweepSpec, TrainSpec
from orchestrator.spec.trial_config import (
                                            DOMAIN_EXTRACTOR,
                                            SweepContext,
                                            TrialConfig,
                                            build_trial_config,
                                            domain_extractor,
                                            method_config,
                                            trial_number,
)

__all__ = ["DOMAIN_EXTRACTOR", "METHOD_KEY", "PRESET_KEY", "DataSpec", "SpecError", "SweepContext", "SweepSpec",
           "TrainSpec", "TrialConfig", "apply_sets", "build_trial_config", "domain_extractor", "load_spec",
           "method_config", "parse_spec", "read_yaml", "trial_number"]
