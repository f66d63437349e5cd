"""modgap: the speech-text modality gap of speech LLMs, measured and dissected."""
