from modgap.metrics.probes import ProbesOptions, run_probes
from modgap.runlog import logged

with logged(snakemake.log[0]):
    run_probes(list(snakemake.input.stores), snakemake.input.table, ProbesOptions.from_config(snakemake.params.options),
               dict(snakemake.wildcards), snakemake.output[0])
