# Metrics: every representation metric of P1 and P2 from the stored states of one (model, dataset, voice), streamed
# across its shards. No forward pass: changing a metric option reruns this and what follows, never the states.
METRICS = "results/metrics/{model}/{dataset}/{voice}"


rule metrics:
    input:
        stores=shard_stores,
        table=lambda wc: CORPUS_TABLE.format(dataset=wc.dataset, split="test", voice=wc.voice),
    output:
        item_metrics=f"{METRICS}/items.parquet",
        cka=f"{METRICS}/cka.parquet",
        readouts=f"{METRICS}/cka_readouts.csv",
        summary=f"{METRICS}/summary.json",
        base_layers=f"{METRICS}/base_layers.csv",
    params:
        options=config["metrics"],
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=int(config["metrics"]["device"] != "cpu"),
    log:
        f"{LOGS}/metrics/{{model}}/{{dataset}}/{{voice}}.log",
    benchmark:
        f"{BENCH}/metrics/{{model}}/{{dataset}}/{{voice}}.tsv"
    conda:
        "../envs/modgap.yaml"
    script:
        "../scripts/metrics.py"


rule metrics_heatmaps:
    input:
        stores=shard_stores,
        table=lambda wc: CORPUS_TABLE.format(dataset=wc.dataset, split="test", voice=wc.voice),
    output:
        f"{METRICS}/heatmaps.npz",
    params:
        heatmap=config["plots"]["heatmap"],
        truth=config["metrics"]["truth"],
        band=config["metrics"]["dtw"]["band"],
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    log:
        f"{LOGS}/metrics_heatmaps/{{model}}/{{dataset}}/{{voice}}.log",
    conda:
        "../envs/modgap.yaml"
    script:
        "../scripts/metrics_heatmaps.py"


rule metrics_attention_rows:
    input:
        stores=shard_stores,
        table=lambda wc: CORPUS_TABLE.format(dataset=wc.dataset, split="test", voice=wc.voice),
    output:
        f"{METRICS}/attention_rows.npz",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    log:
        f"{LOGS}/metrics_attention_rows/{{model}}/{{dataset}}/{{voice}}.log",
    conda:
        "../envs/modgap.yaml"
    script:
        "../scripts/metrics_attention_rows.py"


rule probes:
    input:
        stores=shard_stores,
        table=lambda wc: CORPUS_TABLE.format(dataset=wc.dataset, split="test", voice=wc.voice),
    output:
        f"{METRICS}/probes.csv",
    params:
        options=config["probes"],
    threads: 1
    resources:
        mem_mb=8000,  # the decision states of every item: 4 (L+1) d bytes per item and condition
        runtime=240,
    log:
        f"{LOGS}/probes/{{model}}/{{dataset}}/{{voice}}.log",
    benchmark:
        f"{BENCH}/probes/{{model}}/{{dataset}}/{{voice}}.tsv"
    conda:
        "../envs/modgap.yaml"
    script:
        "../scripts/probes.py"


rule lens_strata:
    input:
        item_metrics=f"{METRICS}/items.parquet",
        table=lambda wc: CORPUS_TABLE.format(dataset=wc.dataset, split="test", voice=wc.voice),
    output:
        f"{METRICS}/lens_strata.csv",
    params:
        seed=config["metrics"]["seed"],
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    log:
        f"{LOGS}/lens_strata/{{model}}/{{dataset}}/{{voice}}.log",
    conda:
        "../envs/modgap.yaml"
    script:
        "../scripts/lens_strata.py"



rule transcript_layers:
    input:
        f"{METRICS}/items.parquet",
    output:
        f"{METRICS}/transcript.csv",
    params:
        options=config["metrics"],
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    log:
        f"{LOGS}/transcript_layers/{{model}}/{{dataset}}/{{voice}}.log",
    conda:
        "../envs/modgap.yaml"
    script:
        "../scripts/transcript_layers.py"
