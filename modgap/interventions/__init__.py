"""Interventions stage (P1 edits, P2 calibration and text redundancy): tensor ops, prompt hooks, the driver and its
report tables. One job per module: `ops` (pure algebra), `hooks` (record/edit around a prefill), `calibration`
(moment statistics), `redundancy` (repeated-word items), `runner` (the driver), `report` (tables)."""
from modgap.interventions.calibration import (
    CalibrationStats,
    MomentStats,
    check_held_out,
)
from modgap.interventions.hooks import RowEdit, edit_rows, hooked, prefill_edited, prefill_recorded, record_rows
from modgap.interventions.ops import angle_projection, length_normalization, moment_calibration
from modgap.interventions.redundancy import redundant_item, repeat_words
from modgap.interventions.report import mcnemar_exact, p1_table, p2_calibration_table, redundancy_table, summarize
from modgap.interventions.runner import (
    COLUMNS,
    Calibration,
    Edit,
    Redundancy,
    conditions_from_config,
    fit_calibration,
    resolve_layer,
    run_conditions,
    select_edits,
)

__all__ = [
    "COLUMNS", "Calibration", "CalibrationStats", "Edit", "MomentStats", "Redundancy", "RowEdit",
    "angle_projection", "check_held_out", "conditions_from_config", "edit_rows", "fit_calibration", "hooked",
    "length_normalization", "mcnemar_exact", "moment_calibration", "p1_table", "p2_calibration_table",
    "prefill_edited", "prefill_recorded", "record_rows", "redundancy_table", "redundant_item", "repeat_words",
    "resolve_layer", "run_conditions", "select_edits", "summarize",
]
