# modgap: the speech-text modality gap of speech LLMs, from benchmark to figures.
# Stages live in rules/*.smk; all logic lives in the modgap package; scripts/ are thin entry points.
import sys

from modgap.config import ConfigError, validate_config


configfile: "config.yaml"


try:
    config = validate_config(config)
except ConfigError as error:
    sys.exit(f"modgap: {error}")


include: "rules/common.smk"
include: "rules/corpus.smk"
include: "rules/lab.smk"
include: "rules/states.smk"
include: "rules/metrics.smk"
include: "rules/stats.smk"
include: "rules/interventions.smk"
include: "rules/plots.smk"


localrules:
    all,
    figures,


rule all:
    default_target: True
    input:
        corpus_targets(),
        [f"{LAB}/accuracy.csv"] if LAB_PLAN else [],
        "results/states/accuracy.csv",
        "results/states/suites.csv",
        metrics_summaries(),
        stats_targets(),
        interventions_targets(),
        rules.figures.input,
