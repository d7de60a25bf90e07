"""tailored.experiments: A/B tests declared in configuration (:mod:`.config`), assignment of
users to variants (:mod:`.assign`) and the statistics that judge them (:mod:`.stats`).

A layer below serving and training: it imports only ``tailored.data`` and the floor.
"""

from tailored.experiments.assign import Assigner, Assignment, unit
from tailored.experiments.config import (
    VARIANT_KEYS,
    Experiment,
    ExperimentError,
    Experiments,
    Holdout,
    Variant,
    load_experiments,
    parse_experiments,
)

__all__ = [
    "VARIANT_KEYS",
    "Assigner",
    "Assignment",
    "Experiment",
    "ExperimentError",
    "Experiments",
    "Holdout",
    "Variant",
    "load_experiments",
    "parse_experiments",
    "unit",
]
