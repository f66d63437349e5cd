from modgap.corpus.stage import AlignSpec, align_split
from modgap.runlog import logged

with logged(snakemake.log[0]) as log:
    a = snakemake.params.align
    spec = AlignSpec(
        beam=a["beam"], wbeam=a["wbeam"], pbeam=a["pbeam"], max_unaligned=a["max_unaligned"],
        asr_engine=a["asr_gate"]["engine"], max_wer=a["asr_gate"]["max_wer"],
    )
    df = align_split(snakemake.input.table, spec, snakemake.output[0], workers=snakemake.threads)
    log.info("aligned %d items; status counts: %s", len(df), df["status"].value_counts().to_dict())
