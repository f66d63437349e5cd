"""States stage: the forward spine (`spine`), readouts computed in it (`readouts`), the hidden-state store (`store`),
its options (`options`) and the driver (`stage`)."""
