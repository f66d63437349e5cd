from modgap.runlog import logged
from modgap.stats.stage import run_findings

with logged(snakemake.log[0]):
    i, p = snakemake.input, snakemake.params
    metrics = {m: {"items": i.item_metrics[k], "cka": i.cka[k], "readouts": i.readouts[k], "summary": i.summaries[k]}
               for k, m in enumerate(p.models)}
    for key in ("base_layers", "lens_strata", "transcript", "probes"):
        for model, path in zip(p.models, i.get(key, [])):
            metrics[model][key] = path
    interventions = dict(zip(("controls", "conditions"), i.interventions)) or None
    run_findings(metrics, i.fits, i.logistic, interventions, p.n_boot, p.seed,
                 p.include_layer0, {"csv": snakemake.output.csv, "markdown": snakemake.output.markdown})
