# Plots: figures from the cached tables only (never a store or a model), PNG and PDF, marked for the HTML report.
# `snakemake figures` (make figures) re-plots; a plots option change reruns only these jobs.
FIGURES = "results/figures/{dataset}/{voice}"
PLOT_STYLE = config["plots"]["style"]
HEATMAP = config["plots"]["heatmap"]


rule figures:
    input:
        figure_targets(),


rule plot_accuracy:
    input:
        "results/states/accuracy.csv",
    output:
        figure("results/figures/accuracy", "fig_accuracy", "Accuracy"),
    params:
        style=PLOT_STYLE,
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    log:
        f"{LOGS}/plots/accuracy.log",
    conda:
        "../envs/modgap.yaml"
    script:
        "../scripts/plots.py"


use rule plot_accuracy as plot_metrics with:
    input:
        expand(f"{METRICS}/items.parquet", model=MODELS, allow_missing=True),
    output:
        layers=figure(f"{FIGURES}/layers", "fig_layers", "Representations"),
        paths=figure(f"{FIGURES}/paths", "fig_paths", "Alignment"),
        items_cos=figure(f"{FIGURES}/items_cos", "fig_items", "Gap statistics"),
        items_aps=figure(f"{FIGURES}/items_aps", "fig_items", "Gap statistics"),
        synchrony=figure(f"{FIGURES}/synchrony", "fig_synchrony", "Representations"),
    params:
        models=list(MODELS),
        options=config["plots"],
        first_layer=0 if config["metrics"]["include_layer0"] else 1,
    log:
        f"{LOGS}/plots/metrics/{{dataset}}/{{voice}}.log",


use rule plot_accuracy as plot_attention with:
    input:
        expand(f"{METRICS}/items.parquet", model=MODELS, allow_missing=True),
    output:
        figure(f"{FIGURES}/attention", "fig_attention", "Decision"),
    params:
        models=list(MODELS),
        options=config["plots"],
    log:
        f"{LOGS}/plots/attention/{{dataset}}/{{voice}}.log",


use rule plot_accuracy as plot_attention_rows with:
    input:
        f"{METRICS}/attention_rows.npz",
    output:
        figure(f"{FIGURES}/attention_rows/{{model}}", "fig_attention_rows", "Decision", "{model}"),
    params:
        style=PLOT_STYLE,
    log:
        f"{LOGS}/plots/attention_rows/{{dataset}}/{{voice}}/{{model}}.log",


use rule plot_accuracy as plot_base_layers with:
    input:
        expand(f"{METRICS}/base_layers.csv", model=MODELS, allow_missing=True),
    output:
        figure(f"{FIGURES}/base_layers", "fig_base_layers", "Alignment"),
    params:
        models=list(MODELS),
        style=PLOT_STYLE,
    log:
        f"{LOGS}/plots/base_layers/{{dataset}}/{{voice}}.log",


use rule plot_accuracy as plot_gap with:
    input:
        points=f"{STATS}/points.csv",
        fits=f"{STATS}/fits.csv",
        decomposition=f"{STATS}/decomposition.csv",
    output:
        scatter=figure(f"{FIGURES}/gap_scatter", "fig_gap", "Gap statistics"),
        decomposition=figure(f"{FIGURES}/decomposition", "fig_decomposition", "Gap statistics"),
    log:
        f"{LOGS}/plots/gap/{{dataset}}/{{voice}}.log",


use rule plot_accuracy as plot_cka with:
    input:
        cka=f"{METRICS}/cka.parquet",
        readouts=f"{METRICS}/cka_readouts.csv",
    output:
        biased=figure(f"{FIGURES}/cka/{{model}}_biased", "fig_cka", "Cross-layer CKA", "{model}"),
        unbiased=figure(f"{FIGURES}/cka/{{model}}_unbiased", "fig_cka", "Cross-layer CKA", "{model}"),
        grid=figure(f"{FIGURES}/cka/{{model}}_grid", "fig_cka_grid", "Cross-layer CKA", "{model}"),
    log:
        f"{LOGS}/plots/cka/{{dataset}}/{{voice}}/{{model}}.log",


use rule plot_accuracy as plot_heatmaps with:
    input:
        f"{METRICS}/heatmaps.npz",
    output:
        [path for stem in heatmap_stems(heatmap_count(), HEATMAP["layers"])
         for path in figure(f"{FIGURES}/heatmaps/{{model}}/{stem}", "fig_heatmap", "Token alignment", "{model}")],
    params:
        layers=HEATMAP["layers"],
        style=PLOT_STYLE,
    log:
        f"{LOGS}/plots/heatmaps/{{dataset}}/{{voice}}/{{model}}.log",


use rule plot_accuracy as plot_interventions with:
    input:
        conditions=f"{INTERVENTIONS}/conditions.csv",
        redundancy=f"{INTERVENTIONS}/redundancy.csv",
    output:
        edits=figure(f"{FIGURES}/edits", "fig_edits", "Interventions"),
        edit_layers=figure(f"{FIGURES}/edit_layers", "fig_edit_layers", "Interventions"),
        calibration=figure(f"{FIGURES}/calibration", "fig_calibration", "Interventions"),
        redundancy=figure(f"{FIGURES}/redundancy", "fig_redundancy", "Interventions"),
    log:
        f"{LOGS}/plots/interventions/{{dataset}}/{{voice}}.log",


use rule plot_accuracy as plot_probes with:
    input:
        expand(f"{METRICS}/probes.csv", model=MODELS, allow_missing=True),
    output:
        all=figure(f"{FIGURES}/probes", "fig_probes", "Decision dynamics"),
        flipped=figure(f"{FIGURES}/probes_flipped", "fig_probes", "Decision dynamics"),
    log:
        f"{LOGS}/plots/probes/{{dataset}}/{{voice}}.log",


use rule plot_accuracy as plot_lens_strata with:
    input:
        expand(f"{METRICS}/lens_strata.csv", model=MODELS, allow_missing=True),
    output:
        figure(f"{FIGURES}/lens_strata", "fig_lens_strata", "Decision dynamics"),
    params:
        models=list(MODELS),
        style=PLOT_STYLE,
    log:
        f"{LOGS}/plots/lens_strata/{{dataset}}/{{voice}}.log",


use rule plot_accuracy as plot_transcript with:
    input:
        expand(f"{METRICS}/transcript.csv", model=MODELS, allow_missing=True),
    output:
        figure(f"{FIGURES}/transcript", "fig_transcript", "Decision dynamics"),
    params:
        models=list(MODELS),
        style=PLOT_STYLE,
    log:
        f"{LOGS}/plots/transcript/{{dataset}}/{{voice}}.log",


use rule plot_accuracy as plot_redundancy_lens with:
    input:
        f"{INTERVENTIONS}/redundancy_lens.csv",
    output:
        figure(f"{FIGURES}/redundancy_entropy", "fig_redundancy_entropy", "Interventions"),
    log:
        f"{LOGS}/plots/redundancy_lens/{{dataset}}/{{voice}}.log",
