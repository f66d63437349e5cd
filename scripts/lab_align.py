from modgap.lab.stage import run_align
from modgap.lab.recipe import Recipe
from modgap.runlog import logged

with logged(snakemake.log[0]) as log:
    recipe = Recipe.from_dict(snakemake.params.recipe)
    result = run_align(
        recipe, snakemake.wildcards.strategy, snakemake.input.model, list(snakemake.input.tables),
        snakemake.params.world_seed, snakemake.output[0],
    )
    log.info("align %s: %d steps in %.0f s", snakemake.wildcards.strategy, len(result["losses"]), result["seconds"])
