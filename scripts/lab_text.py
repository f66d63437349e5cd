from modgap.lab.stage import run_text
from modgap.lab.recipe import Recipe
from modgap.runlog import logged

with logged(snakemake.log[0]) as log:
    recipe = Recipe.from_dict(snakemake.params.recipe)
    result = run_text(recipe, snakemake.params.world_seed, snakemake.output[0])
    log.info("text LM: %d steps in %.0f s, final loss %.3f", len(result["losses"]), result["seconds"], result["losses"][-1])
