from modgap.corpus.stage import write_summary
from modgap.runlog import logged

with logged(snakemake.log[0]) as log:
    summary = write_summary(
        snakemake.params.tables, snakemake.output.json, snakemake.output.md, snakemake.params.tolerance_ms
    )
    log.info("summary: %s", summary)
