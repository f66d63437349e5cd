from modgap.metrics.heatmap import heatmap_data
from modgap.runlog import logged

with logged(snakemake.log[0]) as log:
    p = snakemake.params
    ids = heatmap_data(list(snakemake.input.stores), snakemake.input.table, p.heatmap["items"], p.heatmap["layers"],
                       p.truth, p.band, snakemake.output[0])
    log.info("heatmaps of items %s at layers %s", ids, p.heatmap["layers"])
