from modgap.metrics.attention_rows import attention_rows
from modgap.runlog import logged

with logged(snakemake.log[0]) as log:
    ids = attention_rows(list(snakemake.input.stores), snakemake.input.table, snakemake.output[0])
    log.info("attention rows of items %s", ids)
