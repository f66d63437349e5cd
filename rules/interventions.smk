# Interventions: every model re-scores each test shard under P1's edits (each with its random, even and other-item
# controls), P2's calibration and text redundancy (forward passes with hooks, one job per shard), then one job
# gathers the papers' tables and the path-minus-random effects per (dataset, voice).
INTERVENTIONS = "results/interventions/{dataset}/{voice}"
INTERVENTION_TABLES = ["conditions", "controls", "p1_table", "calibration", "redundancy", "redundancy_lens"]


rule interventions_shard:
    input:
        table=lambda wc: CORPUS_TABLE.format(dataset=wc.dataset, split="test", voice=wc.voice),
        calib=calib_table,
        model=lambda wc: model_input(wc.model),
    output:
        f"{INTERVENTIONS}/{{model}}/shard{{shard}}.parquet",
    params:
        run=lambda wc: MODELS[wc.model].to_dict(),
        states=config["states"],
        section=config["interventions"],
    threads: 1
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=lambda wc: gpu_jobs(wc.model),
    log:
        f"{LOGS}/interventions/{{dataset}}/{{voice}}/{{model}}/shard{{shard}}.log",
    benchmark:
        f"{BENCH}/interventions/{{dataset}}/{{voice}}/{{model}}/shard{{shard}}.tsv"
    conda:
        "../envs/modgap.yaml"
    script:
        "../scripts/interventions_shard.py"


rule interventions:
    input:
        lambda wc: [f"{INTERVENTIONS}/{m}/shard{k}.parquet".format(**wc) for m in intervention_models()
                    for k in range(n_shards(wc.dataset))],
    output:
        per_item=f"{INTERVENTIONS}/items.parquet",
        tables=expand(f"{INTERVENTIONS}/{{table}}.csv", table=INTERVENTION_TABLES, allow_missing=True),
        markdown=report(f"{INTERVENTIONS}/tables.md", caption="../workflow/report/interventions_tables.rst",
                        category="Interventions"),
    params:
        tables=INTERVENTION_TABLES,
        models=intervention_models(),
        shards=lambda wc: n_shards(wc.dataset),
        k=config["interventions"]["k"],
        stats_mode=config["interventions"]["stats_mode"],
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    log:
        f"{LOGS}/interventions/{{dataset}}/{{voice}}/gather.log",
    conda:
        "../envs/modgap.yaml"
    script:
        "../scripts/interventions.py"
