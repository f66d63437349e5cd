"""The lab speech LLM: a tiny Qwen2-Audio trained here from scratch, so it has a real modality gap to study."""
