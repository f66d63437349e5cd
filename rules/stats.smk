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


rule findings:
    input:
        item_metrics=expand(f"{METRICS}/items.parquet", model=MODELS, allow_missing=True),
        cka=expand(f"{METRICS}/cka.parquet", model=MODELS, allow_missing=True),
        readouts=expand(f"{METRICS}/cka_readouts.csv", model=MODELS, allow_missing=True),
        summaries=expand(f"{METRICS}/summary.json", model=MODELS, allow_missing=True),
        base_layers=expand(f"{METRICS}/base_layers.csv", model=MODELS, allow_missing=True),
        lens_strata=optional_metrics("lens_strata.csv", "lens" in config["states"]["readouts"]),
        transcript=optional_metrics("transcript.csv", "transcript" in config["states"]["readouts"]),
        probes=optional_metrics("probes.csv", config["probes"]["enabled"]),
        fits=f"{STATS}/fits.csv",
        logistic=f"{STATS}/logistic.csv",
        interventions=lambda wc: [f"{INTERVENTIONS}/{t}.csv".format(**wc) for t in ("controls", "conditions")],
    output:
        csv=f"{STATS}/findings.csv",
        markdown=report(f"{STATS}/findings.md", caption="../workflow/report/findings.rst", category="Findings"),
    params:
        models=list(MODELS),
        n_boot=config["stats"]["n_boot"],
        seed=config["stats"]["seed"],
        include_layer0=config["metrics"]["include_layer0"],
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    log:
        f"{LOGS}/findings/{{dataset}}/{{voice}}.log",
    conda:
        "../envs/modgap.yaml"
    script:
        "../scripts/findings.py"


rule decision_tables:
    input:
        metrics=expand(f"{METRICS}/items.parquet", model=MODELS, allow_missing=True),
        interventions=lambda wc: [f"{INTERVENTIONS}/{t}.csv".format(**wc) for t in ("controls", "conditions")]
        if KV_MERGE else [],
    output:
        **({"attention": f"{STATS}/attention.csv"} if "attention" in config["states"]["readouts"] else {}),
        **({"kv_merge": f"{STATS}/kv_merge.csv"} if KV_MERGE else {}),
        markdown=report(f"{STATS}/decision_tables.md", caption="../workflow/report/decision_tables.rst",
                        category="Decision"),
    params:
        models=list(MODELS),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    log:
        f"{LOGS}/decision_tables/{{dataset}}/{{voice}}.log",
    conda:
        "../envs/modgap.yaml"
    script:
        "../scripts/decision_tables.py"
