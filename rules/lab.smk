# Lab speech LLM: text LM -> encoder CTC -> alignment per strategy, or the shipped checkpoints; then accuracy.
# lab.source: train = always train; shipped = import lab/checkpoints (fails if its fingerprint differs from the
# current recipe + training data); auto = shipped when the fingerprints match, else train.
from modgap.lab.workflow import lab_plan

LAB_PLAN = lab_plan(config, root=workflow.basedir)  # None when no model is a lab checkpoint

if LAB_PLAN is not None:
    LAB_RECIPE = LAB_PLAN.recipe.to_dict()


    wildcard_constraints:
        strategy="frozen|full",


    if LAB_PLAN.shipped:

        rule lab_import:
            input:
                meta=f"{SHIPPED}/recipe.json",
                shipped=f"{SHIPPED}/{{strategy}}",
            output:
                directory(f"{LAB}/{{strategy}}"),
            params:
                recipe=LAB_RECIPE,
                data=LAB_PLAN.data_spec,
            threads: 1
            resources:
                mem_mb=1000,
                runtime=10,
            log:
                f"{LOGS}/lab_import/{{strategy}}.log",
            conda:
                "../envs/modgap.yaml"
            script:
                "../scripts/lab_import.py"

    else:

        rule lab_text:
            output:
                directory(f"{LAB}/pretrain/text"),
            params:
                recipe=LAB_RECIPE,
                world_seed=LAB_PLAN.world_seed,
            threads: LAB_PLAN.recipe.threads
            resources:
                mem_mb=4000,
                runtime=30,
            log:
                f"{LOGS}/lab_text.log",
            benchmark:
                f"{BENCH}/lab_text.tsv"
            conda:
                "../envs/modgap.yaml"
            script:
                "../scripts/lab_text.py"

        rule lab_audio:
            input:
                model=f"{LAB}/pretrain/text",
                tables=LAB_PLAN.train_tables,
            output:
                directory(f"{LAB}/pretrain/audio"),
            params:
                recipe=LAB_RECIPE,
            threads: LAB_PLAN.recipe.threads
            resources:
                mem_mb=6000,
                runtime=30,
            log:
                f"{LOGS}/lab_audio.log",
            benchmark:
                f"{BENCH}/lab_audio.tsv"
            conda:
                "../envs/modgap.yaml"
            script:
                "../scripts/lab_audio.py"

        rule lab_align:
            input:
                model=f"{LAB}/pretrain/audio",
                tables=LAB_PLAN.train_tables,
            output:
                directory(f"{LAB}/{{strategy}}"),
            params:
                recipe=LAB_RECIPE,
                world_seed=LAB_PLAN.world_seed,
            threads: LAB_PLAN.recipe.threads
            resources:
                mem_mb=6000,
                runtime=60,
            log:
                f"{LOGS}/lab_align/{{strategy}}.log",
            benchmark:
                f"{BENCH}/lab_align/{{strategy}}.tsv"
            conda:
                "../envs/modgap.yaml"
            script:
                "../scripts/lab_align.py"

        rule lab_export:
            input:
                expand(f"{LAB}/{{strategy}}", strategy=LAB_PLAN.strategies),
            output:
                directory(SHIPPED),
            params:
                checkpoints=LAB_PLAN.checkpoints,
                recipe=LAB_RECIPE,
                data=LAB_PLAN.data_spec,
            threads: 1
            resources:
                mem_mb=1000,
                runtime=10,
            log:
                f"{LOGS}/lab_export.log",
            conda:
                "../envs/modgap.yaml"
            script:
                "../scripts/lab_export.py"


    rule lab_score:
        input:
            models=expand(f"{LAB}/{{strategy}}", strategy=LAB_PLAN.strategies),
            test=LAB_PLAN.test_table,
        output:
            csv=report(f"{LAB}/accuracy.csv", caption="../workflow/report/lab_accuracy.rst", category="Lab model"),
            predictions=f"{LAB}/predictions.parquet",
            details=f"{LAB}/predictions.json",
        params:
            checkpoints=LAB_PLAN.checkpoints,
            threads=LAB_PLAN.recipe.threads,
        threads: LAB_PLAN.recipe.threads
        resources:
            mem_mb=4000,
            runtime=30,
        log:
            f"{LOGS}/lab_score.log",
        benchmark:
            f"{BENCH}/lab_score.tsv"
        conda:
            "../envs/modgap.yaml"
        script:
            "../scripts/lab_score.py"
