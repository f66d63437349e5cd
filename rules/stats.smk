# Stats: do the metrics predict the gap? One job per (dataset, voice) over every model's metrics table, and the lab
# stage's accuracy table (the base LM's text accuracy, for P1's decomposition) when a model is a lab checkpoint.
STATS = "results/stats/{dataset}/{voice}"
STAT_TABLES = ["points", "fits", "decomposition", "item_layer", "item_layer_by_model", "logistic", "subjects",
               "within_subject"]


rule stats:
    input:
        metrics=expand(f"{METRICS}/items.parquet", model=MODELS, allow_missing=True),
        lab=[f"{LAB}/accuracy.csv"] if any(run.lab_strategy for run in MODELS.values()) else [],
    output:
        tables=expand(f"{STATS}/{{table}}.csv", table=STAT_TABLES, allow_missing=True),
        markdown=report(f"{STATS}/tables.md", caption="../workflow/report/stats_tables.rst", category="Gap statistics"),
        headline=f"{STATS}/headline.json",
    params:
        tables=STAT_TABLES,
        models=list(MODELS),
        options=config["stats"],
        include_layer0=config["metrics"]["include_layer0"],
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    log:
        f"{LOGS}/stats/{{dataset}}/{{voice}}.log",
    conda:
        "../envs/modgap.yaml"
    script:
        "../scripts/stats.py"
