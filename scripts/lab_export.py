from modgap.lab.stage import export
from modgap.lab.recipe import Recipe
from modgap.runlog import logged

with logged(snakemake.log[0]) as log:
    export(snakemake.params.checkpoints, Recipe.from_dict(snakemake.params.recipe), snakemake.params.data, snakemake.output[0])
    log.info("exported %d checkpoints to %s", len(snakemake.params.checkpoints), snakemake.output[0])
