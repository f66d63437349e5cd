import pandas as pd

from modgap.atomic import write_csv
from modgap.metrics.options import MetricsOptions
from modgap.metrics.transcript import transcript_table
from modgap.runlog import logged

with logged(snakemake.log[0]):
    level = MetricsOptions.from_config(snakemake.params.options).transcript_level
    write_csv(transcript_table(pd.read_parquet(snakemake.input[0]), level), snakemake.output[0])
