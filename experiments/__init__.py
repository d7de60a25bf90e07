"""tailored.experiments: A/B tests declared in configuration (:mod:`.config`), assignment of
users to variants (:mod:`.assign`), decisions that promote a variant (:mod:`.decisions`),
and the statistics that judge them (:mod:`.stats`).

A layer below serving and training: it imports only ``tailored.data`` and the floor.
"""

from tailored.experiments.assign import Assigner, Assignment, unit
from tailored.experiments.config import (
    VARIANT_KEYS,
    Decision,
    Experiment,
    ExperimentError,
    Experiments,
    Holdout,
    Variant,
    decisions_path,
    load_experiments,
    parse_experiments,
    read_decisions,
)
from tailored.experiments.decisions import DecisionRefused, decide

__all__ = [
    "VARIANT_KEYS",
    "Assigner",
    "Assignment",
    "Decision",
    "DecisionRefused",
    "Experiment",
    "ExperimentError",
    "Experiments",
    "Holdout",
    "Variant",
    "decide",
    "decisions_path",
    "load_experiments",
    "parse_experiments",
    "read_decisions",
    "unit",
]
