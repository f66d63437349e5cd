from modgap.runlog import logged
from modgap.states.stage import write_tables

with logged(snakemake.log[0]) as log:
    acc = write_tables(
        list(snakemake.input), dict(snakemake.wildcards), snakemake.output.predictions, snakemake.output.accuracy,
        snakemake.output.responses,
        snakemake.output.skipped,
    )
    log.info("%s", acc.to_dict("records"))
