import pandas as pd

from modgap.atomic import write_csv
from modgap.corpus.table import table_style
from modgap.metrics.lens_strata import lens_strata
from modgap.runlog import logged

with logged(snakemake.log[0]):
    write_csv(lens_strata(pd.read_parquet(snakemake.input.item_metrics), table_style(snakemake.input.table),
                          snakemake.params.seed), snakemake.output[0])
