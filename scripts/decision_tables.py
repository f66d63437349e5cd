from modgap.runlog import logged
from modgap.stats.stage import run_decision_tables

with logged(snakemake.log[0]):
    i, o = snakemake.input, snakemake.output
    run_decision_tables(dict(zip(snakemake.params.models, i.metrics)),
                        dict(zip(("controls", "conditions"), i.interventions)) or None,
                        {k: o[k] for k in ("attention", "kv_merge", "markdown") if k in o.keys()})
