"""Corpus stage: benchmark items -> TTS speech with word timings -> forced alignment."""
