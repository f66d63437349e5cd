import pandas as pd

from modgap.runlog import logged

with logged(snakemake.log[0]):
    pd.concat([pd.read_csv(p) for p in snakemake.input], ignore_index=True).to_csv(snakemake.output[0], index=False)
