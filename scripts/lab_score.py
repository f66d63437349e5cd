import torch

from modgap.lab.stage import run_score
from modgap.runlog import logged

with logged(snakemake.log[0]) as log:
    torch.set_num_threads(snakemake.params.threads)
    rows = run_score(
        snakemake.params.checkpoints, snakemake.input.test,
        snakemake.output.csv, snakemake.output.predictions, snakemake.output.details,
    )
    for r in rows:
        log.info("%s: text %.3f speech %.3f gap %.1f", r["checkpoint"], r["text_acc"], r["speech_acc"], r["gap"])
