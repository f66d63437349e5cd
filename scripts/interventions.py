from modgap.interventions.stage import gather
from modgap.runlog import logged

with logged(snakemake.log[0]):
    p, out = snakemake.params, snakemake.output
    shards = {m: list(snakemake.input)[i * p.shards: (i + 1) * p.shards] for i, m in enumerate(p.models)}
    paths = {**dict(zip(p.tables, out.tables)), "items": out.per_item, "markdown": out.markdown}
    gather(shards, paths, p.k, p.stats_mode)
