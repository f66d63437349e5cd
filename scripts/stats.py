from modgap.runlog import logged
from modgap.stats_stage import run_stats

with logged(snakemake.log[0]) as log:
    out_dir = snakemake.output.headline.rsplit("/", 1)[0]
    run_stats(dict(zip(snakemake.params.models, snakemake.input)), snakemake.params.options, snakemake.params.include_layer0, out_dir)
