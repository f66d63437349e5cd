from modgap.interventions.stage import gather
from modgap.runlog import logged

with logged(snakemake.log[0]):
    p = snakemake.params
    shards = {m: list(snakemake.input)[i * p.shards: (i + 1) * p.shards] for i, m in enumerate(p.models)}
    gather(shards, snakemake.output.markdown.rsplit("/", 1)[0], p.k, p.stats_mode)
