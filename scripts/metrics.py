import torch

from modgap.devices import job_device
from modgap.metrics.options import MetricsOptions
from modgap.metrics.stage import run_metrics
from modgap.runlog import logged

options = MetricsOptions.from_config(snakemake.params.options)
with logged(snakemake.log[0]), job_device(options.device) as device:
    torch.set_num_threads(snakemake.threads)
    run_metrics(list(snakemake.input.stores), snakemake.input.table, options, device, dict(snakemake.wildcards),
                dict(snakemake.output.items()))
