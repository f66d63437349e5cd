from modgap.corpus.build import AlignSpec, align_split
from modgap.runlog import logged

with logged(snakemake.log[0]) as log:
    a = snakemake.params.align
    gate = a["asr_gate"]
    spec = AlignSpec(a["beam"], a["wbeam"], a["pbeam"], a["max_unaligned"], gate["engine"], gate["max_wer"])
    df = align_split(snakemake.input.table, spec, snakemake.output[0], workers=snakemake.threads)
    log.info("aligned %d items; status counts: %s", len(df), df["status"].value_counts().to_dict())
