# Corpus: benchmark items -> speech with word timings -> forced alignment -> per-dataset summary.


wildcard_constraints:
    split="train|calib|test",
    dataset="[A-Za-z0-9_\-]+",


rule corpus_items:
    output:
        jsonl=f"{CORPUS}/items.jsonl",
        recordings=directory(f"{CORPUS}/recordings"),
    params:
        spec=lambda wc: dataset_spec(wc.dataset),
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    log:
        f"{LOGS}/corpus_items/{{dataset}}/{{split}}.log",
    benchmark:
        f"{BENCH}/corpus_items/{{dataset}}/{{split}}.tsv"
    conda:
        "../envs/modgap.yaml"
    script:
        "../scripts/corpus_items.py"


rule corpus_speech:
    input:
        f"{CORPUS}/items.jsonl",
    output:
        table=f"{CORPUS}/{{voice}}/speech.parquet",
        audio=directory(f"{CORPUS}/{{voice}}/audio"),
    params:
        style=lambda wc: dataset_spec(wc.dataset)["style"],
        rate=lambda wc: split_rate(wc.split),
        pitch=config["tts"]["pitch"],
    threads: config["corpus"]["workers"]
    resources:
        mem_mb=2000,
        runtime=60,
    log:
        f"{LOGS}/corpus_speech/{{dataset}}/{{split}}/{{voice}}.log",
    benchmark:
        f"{BENCH}/corpus_speech/{{dataset}}/{{split}}/{{voice}}.tsv"
    conda:
        "../envs/modgap.yaml"
    script:
        "../scripts/corpus_speech.py"


rule corpus_align:
    input:
        table=f"{CORPUS}/{{voice}}/speech.parquet",
        audio=f"{CORPUS}/{{voice}}/audio",
    output:
        CORPUS_TABLE,
    params:
        align={k: v for k, v in config["align"].items() if k != "agreement_ms"},
    threads: config["corpus"]["workers"]
    resources:
        mem_mb=2000,
        runtime=120,
    log:
        f"{LOGS}/corpus_align/{{dataset}}/{{split}}/{{voice}}.log",
    benchmark:
        f"{BENCH}/corpus_align/{{dataset}}/{{split}}/{{voice}}.tsv"
    conda:
        "../envs/modgap.yaml"
    script:
        "../scripts/corpus_align.py"


rule corpus_summary:
    input:
        lambda wc: corpus_tables(wc.dataset).values(),
    output:
        json="results/corpus/{dataset}/summary.json",
        md=report(
            "results/corpus/{dataset}/summary.md",
            caption="../workflow/report/corpus_summary.rst",
            category="Corpus",
        ),
    params:
        tables=lambda wc: corpus_tables(wc.dataset),
        tolerance_ms=config["align"]["agreement_ms"],
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    log:
        f"{LOGS}/corpus_summary/{{dataset}}.log",
    benchmark:
        f"{BENCH}/corpus_summary/{{dataset}}.tsv"
    conda:
        "../envs/modgap.yaml"
    script:
        "../scripts/corpus_summary.py"
