import torch

from modgap.devices import job_device
from modgap.plan import ModelRun
from modgap.runlog import logged
from modgap.states.options import StatesOptions
from modgap.states.stage import run_shard
from modgap.states.store import StoreReader

run = ModelRun(**snakemake.params.run)
with logged(snakemake.log[0]) as log, job_device(run.device) as device:
    torch.set_num_threads(snakemake.threads)
    pred = run_shard(run, snakemake.input.table, int(snakemake.wildcards.shard),
                     StatesOptions.from_config(snakemake.params.states), snakemake.output[0], device=device)
    log.info("dumped %d items (%d skipped) on %s; mean score %s", len(pred) // 2,
             len(StoreReader(snakemake.output[0]).skipped()), device,
             pred.groupby("condition")["score"].mean().to_dict())
