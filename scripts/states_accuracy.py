import pandas as pd

from modgap.atomic import write_csv
from modgap.runlog import logged

with logged(snakemake.log[0]):
    write_csv(pd.concat([pd.read_csv(p) for p in snakemake.input], ignore_index=True), snakemake.output[0])
