"""Interventions stage (P1 edits, P2 calibration and text redundancy): `ops` (pure algebra), `calibration` (moment
statistics), `redundancy` (repeated-word items), `conditions` (the conditions and their re-scoring through the forward
spine and `modgap.models.hooks`), `report` (tables), `options` and `stage` (the driver)."""
