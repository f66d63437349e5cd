from modgap.runlog import logged
from modgap.stats.options import StatsOptions
from modgap.stats.stage import run_stats

with logged(snakemake.log[0]):
    out = {**dict(zip(snakemake.params.tables, snakemake.output.tables)), "markdown": snakemake.output.markdown,
           "headline": snakemake.output.headline}
    run_stats(dict(zip(snakemake.params.models, snakemake.input.metrics)),
              StatsOptions.from_config(snakemake.params.options), snakemake.params.include_layer0, out,
              snakemake.input.lab[0] if snakemake.input.lab else None)
