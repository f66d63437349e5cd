from modgap.corpus.stage import write_split
from modgap.runlog import logged

with logged(snakemake.log[0]) as log:
    n = write_split(
        snakemake.wildcards.dataset, snakemake.params.spec, snakemake.wildcards.split,
        snakemake.output.jsonl, snakemake.output.recordings,
    )
    log.info("wrote %d items to %s", n, snakemake.output.jsonl)
