from modgap.lab.stage import run_audio
from modgap.lab.recipe import Recipe
from modgap.runlog import logged

with logged(snakemake.log[0]) as log:
    recipe = Recipe.from_dict(snakemake.params.recipe)
    result = run_audio(recipe, snakemake.input.model, list(snakemake.input.tables), snakemake.output[0])
    log.info("encoder CTC: %d steps in %.0f s, greedy WER %.3f", len(result["losses"]), result["seconds"], result["train_wer"])
