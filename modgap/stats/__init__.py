"""Stats stage: the gap statistics (`analysis`), their options (`options`) and the driver (`stage`)."""
