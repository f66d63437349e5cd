from modgap.corpus.stage import VoiceSpec, synthesize_split
from modgap.runlog import logged

with logged(snakemake.log[0]) as log:
    voice = VoiceSpec(snakemake.wildcards.voice, snakemake.params.rate, snakemake.params.pitch)
    df = synthesize_split(
        snakemake.input[0], snakemake.params.style, voice,
        snakemake.output.table, snakemake.output.audio, workers=snakemake.threads,
    )
    log.info("voiced %d items (%.0f s of audio) as %s", len(df), df["duration_ms"].sum() / 1e3, voice)
