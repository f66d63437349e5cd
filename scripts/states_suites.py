import pandas as pd

from modgap.atomic import write_csv
from modgap.runlog import logged
from modgap.states.suite import suite_table

with logged(snakemake.log[0]) as log:
    table = suite_table(pd.read_csv(snakemake.input[0]), snakemake.params.suites)
    write_csv(table, snakemake.output[0])
    log.info("%s", table.to_dict("records"))
