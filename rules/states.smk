# States: every model runs every test item as speech (S) and as text (T); scores, generated answers and span hidden
# states go to one Zarr store per (model, dataset, voice, shard), then per-item predictions, responses, skipped items
# and accuracy tables, and each suite's overall score.
import sys

from modgap.plan import expand_models, storage_report

MODELS = expand_models(config["models"], config["prompts"], LAB_PLAN.checkpoints if LAB_PLAN else {})
STATES = "results/states/{model}/{dataset}/{voice}"


wildcard_constraints:
    model="[A-Za-z0-9_.\-]+(@step[0-9]+)?",
    shard="[0-9]+",


if workflow.output_settings.dryrun:
    print(
        *storage_report(
            MODELS,
            {
                f"{d}/{v}": (
                    split_size(d, "test"),
                    CORPUS_TABLE.format(dataset=d, split="test", voice=v),
                    dataset_spec(d)["style"],
                )
                for d in states_datasets()
                for v in voices(d, "test")
            },
            config["states"],
        ),
        sep="\n",
        file=sys.stderr,
    )


rule states_dump:
    input:
        table=lambda wc: CORPUS_TABLE.format(dataset=wc.dataset, split="test", voice=wc.voice),
        model=lambda wc: model_input(wc.model),
    output:
        directory(f"{STATES}/shard{{shard}}.zarr"),
    params:
        run=lambda wc: MODELS[wc.model].to_dict(),
        states=config["states"],
    threads: 1  # torch CPU threads spin-wait under contention: 2 threads ran 3-10x slower than 1 here
    resources:
        mem_mb=lambda wc: 2000 if MODELS[wc.model].lab_strategy else 32000,  # a 7-8B model passes through host memory
        runtime=120,
        gpu=lambda wc: gpu_jobs(wc.model),  # the job takes a free GPU: modgap.devices.job_device
    log:
        f"{LOGS}/states_dump/{{model}}/{{dataset}}/{{voice}}/shard{{shard}}.log",
    benchmark:
        f"{BENCH}/states_dump/{{model}}/{{dataset}}/{{voice}}/shard{{shard}}.tsv"
    conda:
        "../envs/modgap.yaml"
    script:
        "../scripts/states_dump.py"


rule states_tables:
    input:
        shard_stores,
    output:
        predictions=f"{STATES}/predictions.parquet",
        accuracy=f"{STATES}/accuracy.csv",
        responses=f"{STATES}/responses.parquet",
        skipped=f"{STATES}/skipped.csv",  # items whose speech input could not be built, with the reason
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    log:
        f"{LOGS}/states_tables/{{model}}/{{dataset}}/{{voice}}.log",
    benchmark:
        f"{BENCH}/states_tables/{{model}}/{{dataset}}/{{voice}}.tsv"
    conda:
        "../envs/modgap.yaml"
    script:
        "../scripts/states_tables.py"


rule states_accuracy:
    input:
        states_tables(),
    output:
        report("results/states/accuracy.csv", caption="../workflow/report/states_accuracy.rst", category="States"),
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    log:
        f"{LOGS}/states_accuracy.log",
    conda:
        "../envs/modgap.yaml"
    script:
        "../scripts/states_accuracy.py"


rule states_suites:
    input:
        "results/states/accuracy.csv",
    output:
        report("results/states/suites.csv", caption="../workflow/report/states_suites.rst", category="States"),
    params:
        suites=config["suites"],
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    log:
        f"{LOGS}/states_suites.log",
    conda:
        "../envs/modgap.yaml"
    script:
        "../scripts/states_suites.py"
