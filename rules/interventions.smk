# Interventions: every model re-scores each test shard under P1's edits, P2's calibration and text redundancy
# (forward passes with hooks, one job per shard), then one job gathers the papers' tables per (dataset, voice).
INTERVENTIONS = "results/interventions/{dataset}/{voice}"


def intervention_models():
    return config["interventions"]["models"] or list(MODELS)


def calib_table(wc):
    """The calib split's corpus table in the test voice (or the first calib voice); none without a calib split."""
    if "calib" not in dataset_spec(wc.dataset)["splits"] or not config["interventions"]["calibration"]:
        return []
    calib = voices(wc.dataset, "calib")
    voice = wc.voice if wc.voice in calib else calib[0]
    return [CORPUS_TABLE.format(dataset=wc.dataset, split="calib", voice=voice)]


def gpu_jobs(model):
    """GPU slots a job of `model` takes: 1, or 0 for a model configured on the CPU (modgap.devices.job_device)."""
    return int(MODELS[model].device != "cpu")


def interventions_targets():
    return [f"{INTERVENTIONS}/tables.md".format(dataset=d, voice=v) for d in states_datasets() for v in voices(d, "test")]


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
        "../envs/corpus.yaml"
    script:
        "../scripts/interventions_shard.py"


rule interventions:
    input:
        lambda wc: [f"{INTERVENTIONS}/{m}/shard{k}.parquet".format(**wc) for m in intervention_models()
                    for k in range(n_shards(wc.dataset))],
    output:
        per_item=f"{INTERVENTIONS}/items.parquet",
        tables=expand(f"{INTERVENTIONS}/{{table}}.csv", table=["conditions", "p1_table", "calibration", "redundancy"],
                      allow_missing=True),
        markdown=report(f"{INTERVENTIONS}/tables.md", caption="../workflow/report/interventions_tables.rst",
                        category="Interventions"),
    params:
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
        "../envs/corpus.yaml"
    script:
        "../scripts/interventions.py"
