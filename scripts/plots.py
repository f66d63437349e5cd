"""One entry point for every plot rule: dispatch on the rule's name to the driver in modgap.plots.stage."""
from modgap.plots import stage
from modgap.runlog import logged


def stem(paths) -> str:
    """`x.png`, `x.pdf` -> `x`."""
    return str(paths[0]).rsplit(".", 1)[0]


with logged(snakemake.log[0]):
    i, o, p = snakemake.input, snakemake.output, snakemake.params
    stems = {k: stem(v) for k, v in o.items()}
    match snakemake.rule:
        case "plot_accuracy":
            stage.plot_accuracy(i[0], stem(o), p.style)
        case "plot_metrics":
            stage.plot_metrics(dict(zip(p.models, i)), stems, p.options, p.first_layer)
        case "plot_probes":
            stage.plot_probes(list(i), stems, p.style)
        case "plot_attention":
            stage.plot_attention(dict(zip(p.models, i)), stem(o), p.options)
        case "plot_attention_rows":
            stage.plot_attention_rows(i[0], snakemake.wildcards.model, stem(o), p.style)
        case "plot_base_layers":
            stage.plot_base_layers(dict(zip(p.models, i)), stem(o), p.style)
        case "plot_gap":
            stage.plot_gap(i.points, i.fits, i.decomposition, stems, p.style)
        case "plot_cka":
            stage.plot_cka(i.cka, i.readouts, stems, p.style)
        case "plot_heatmaps":
            pngs = [f for f in o if str(f).endswith(".png")]
            stage.plot_heatmaps(i[0], snakemake.wildcards.model, p.layers, [stem([f]) for f in pngs], p.style)
        case "plot_lens_strata":
            stage.plot_lens_strata(dict(zip(p.models, i)), stem(o), p.style)
        case "plot_transcript":
            stage.plot_transcript(dict(zip(p.models, i)), stem(o), p.style)
        case "plot_redundancy_lens":
            stage.plot_redundancy_lens(i[0], stem(o), p.style)
        case "plot_interventions":
            stage.plot_interventions(i.conditions, i.redundancy, stems, p.style)
        case rule:
            raise ValueError(f"scripts/plots.py: no driver for rule {rule}")
