# Path and config helpers shared by every stage. No logic beyond naming things.
import functools

from modgap.corpus.datasets import load_items
from modgap.paths import CORPUS_TABLE, LAB, NATIVE_VOICE, SHIPPED

CORPUS = "results/corpus/{dataset}/{split}"
LOGS = "results/logs"
BENCH = "results/benchmarks"


def dataset_spec(dataset):
    return config["datasets"][dataset]


def voices(dataset, split):
    """Output sets of one split: the configured TTS voices, or the dataset's own recordings."""
    if dataset_spec(dataset)["audio"] == "native":
        return [NATIVE_VOICE]
    return config["tts"]["voices"][split]


@functools.cache
def split_size(dataset, split):
    """Items in one split of a dataset (loaded once per run; shards are cut from it)."""
    return len(load_items(dataset, dataset_spec(dataset))[split])


def split_rate(split):
    return config["tts"]["rates"].get(split, config["tts"]["rate"])


def corpus_tables(dataset):
    """{"split/voice": items.parquet} for every voiced split of a dataset."""
    return {
        f"{split}/{voice}": CORPUS_TABLE.format(dataset=dataset, split=split, voice=voice)
        for split in dataset_spec(dataset)["splits"]
        for voice in voices(dataset, split)
    }


def corpus_targets():
    return expand("results/corpus/{dataset}/summary.json", dataset=config["datasets"])
