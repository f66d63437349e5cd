from modgap.corpus.build import AlignSpec, align_split
from modgap.runlog import logged

with logged(snakemake.log[0]) as log:
    a = snakemake.params.align
    spec = AlignSpec(a["beam"], a["wbeam"], a["pbeam"], a["asr_gate"]["engine"], a["asr_gate"]["max_wer"])
    df = align_split(snakemake.input.table, spec, snakemake.output[0], workers=snakemake.threads)
    log.info("aligned %d items; status counts: %s", len(df), df["status"].value_counts().to_dict())
