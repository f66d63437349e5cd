import torch

from modgap.plan import ModelRun
from modgap.runlog import logged
from modgap.states import run_shard

with logged(snakemake.log[0]) as log:
    torch.set_num_threads(snakemake.threads)
    pred = run_shard(
        ModelRun(**snakemake.params.run), snakemake.input.table, int(snakemake.wildcards.shard),
        snakemake.params.states, snakemake.output[0],
    )
    log.info("dumped %d items; accuracy %s", len(pred) // 2, pred.groupby("condition")["correct"].mean().to_dict())
