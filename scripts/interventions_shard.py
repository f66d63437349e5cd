import torch

from modgap.devices import job_device
from modgap.interventions.options import InterventionsOptions
from modgap.interventions.stage import run_shard
from modgap.plan import ModelRun
from modgap.runlog import logged
from modgap.states.options import StatesOptions

run = ModelRun(**snakemake.params.run)
with logged(snakemake.log[0]) as log, job_device(run.device) as device:
    torch.set_num_threads(snakemake.threads)
    calib = snakemake.input.calib[0] if snakemake.input.calib else None
    table = run_shard(run, snakemake.input.table, calib, int(snakemake.wildcards.shard),
                      StatesOptions.from_config(snakemake.params.states),
                      InterventionsOptions.from_config(snakemake.params.section), snakemake.output[0], device=device)
    log.info("accuracy per condition on %s: %s", device, table.groupby("label")["correct"].mean().round(3).to_dict())
