from modgap.lab.stage import import_shipped
from modgap.lab.recipe import Recipe
from modgap.runlog import logged

with logged(snakemake.log[0]) as log:
    names = import_shipped(
        snakemake.input.meta.rsplit("/", 1)[0], snakemake.wildcards.strategy,
        Recipe.from_dict(snakemake.params.recipe), snakemake.params.data, snakemake.output[0],
    )
    log.info("imported %s", ", ".join(names))
