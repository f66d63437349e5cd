# Path and config helpers shared by every stage (functions only; the rule files hold the rules). No logic beyond
# naming things.
import functools

from modgap.corpus.datasets import load_items
from modgap.paths import CORPUS_TABLE, LAB, NATIVE_VOICE, SHIPPED, heatmap_stems
from modgap.plan import shard_count

CORPUS = "results/corpus/{dataset}/{split}"
LOGS = "results/logs"
BENCH = "results/benchmarks"
KV_MERGE = config["interventions"]["kv_merge"]["enabled"]
DECISION_TABLES = KV_MERGE or "attention" in config["states"]["readouts"]  # P2's Table 2 and 5 types


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


# --- states


def states_datasets():
    return config["states"]["datasets"] or list(config["datasets"])


def n_shards(dataset):
    return shard_count(split_size(dataset, "test"), config["states"]["shard_items"], config["states"]["max_items"])


def model_input(model):
    """The lab stage's checkpoint folder for a lab run; nothing for a model loaded from a path or hub id."""
    run = MODELS[model]
    return [f"{LAB}/{run.lab_strategy}"] if run.lab_strategy else []


def shard_stores(wc):
    """Every shard store of one (model, dataset, voice)."""
    return expand(f"{STATES}/shard{{shard}}.zarr", shard=range(n_shards(wc.dataset)), allow_missing=True)


def states_tables():
    return [
        f"{STATES}/accuracy.csv".format(model=m, dataset=d, voice=v)
        for m in MODELS
        for d in states_datasets()
        for v in voices(d, "test")
    ]


# --- metrics


def metrics_summaries():
    return [
        f"{METRICS}/{name}".format(model=m, dataset=d, voice=v)
        for name in ["summary.json"] + ["transcript.csv"] * ("transcript" in config["states"]["readouts"])
        for m in MODELS
        for d in states_datasets()
        for v in voices(d, "test")
    ]


# --- stats


def optional_metrics(name, enabled):
    """Every model's metrics table `name` (per dataset and voice wildcard) when its analysis is enabled, else none."""
    return expand(f"{METRICS}/{name}", model=MODELS, allow_missing=True) if enabled else []


def stats_targets():
    names = ["headline.json", "findings.csv"] + ["decision_tables.md"] * bool(DECISION_TABLES)
    return [f"{STATS}/{name}".format(dataset=d, voice=v) for name in names
            for d in states_datasets() for v in voices(d, "test")]


# --- interventions


def intervention_models():
    return config["interventions"]["models"] or list(MODELS)


def calib_table(wc):
    """The calib split's corpus table in the test voice (or the first calib voice); none without a calib split."""
    if "calib" not in dataset_spec(wc.dataset)["splits"] or not config["interventions"]["calibration"]:
        return []
    calib = voices(wc.dataset, "calib")
    voice = wc.voice if wc.voice in calib else calib[0]
    return [CORPUS_TABLE.format(dataset=wc.dataset, split="calib", voice=voice)]


def gpu_jobs(model):
    """GPU slots a job of `model` takes: 1, or 0 for a model configured on the CPU (modgap.devices.job_device)."""
    return int(MODELS[model].device != "cpu")


def interventions_targets():
    return [f"{INTERVENTIONS}/tables.md".format(dataset=d, voice=v) for d in states_datasets() for v in voices(d, "test")]


# --- plots


def figure(stem, caption, category, subcategory=None):
    """PNG (in the report, with its caption) and PDF of one figure."""
    png = report(f"{stem}.png", caption=f"../workflow/report/{caption}.rst", category=category,
                 subcategory=subcategory)
    return [png, f"{stem}.pdf"]


def heatmap_models():
    return HEATMAP["models"] or list(MODELS)


def heatmap_count():
    return HEATMAP["items"] if isinstance(HEATMAP["items"], int) else len(HEATMAP["items"])


def figure_targets():
    per_voice = [
        f"{FIGURES}/{name}.png"
        for name in ["layers", "paths", "items_cos", "items_aps", "gap_scatter", "decomposition", "edits",
                     "edit_layers", "calibration", "redundancy", "redundancy_entropy", "synchrony", "base_layers"]
    ] + [f"{FIGURES}/lens_strata.png"] * ("lens" in config["states"]["readouts"])
    per_voice += [f"{FIGURES}/{name}.png" for name in ("probes", "probes_flipped") if config["probes"]["enabled"]]
    per_voice += [f"{FIGURES}/attention.png"] if "attention" in config["states"]["readouts"] else []
    per_voice += ([f"{FIGURES}/attention_rows/{m}.png" for m in MODELS]
                  if "attention" in config["states"]["readouts"] and config["states"]["attention_heatmap_items"] else [])
    per_voice += [f"{FIGURES}/transcript.png"] if "transcript" in config["states"]["readouts"] else []
    per_voice += [f"{FIGURES}/cka/{m}_{kind}.png" for m in MODELS for kind in ("biased", "unbiased", "grid")]
    per_voice += [f"{FIGURES}/heatmaps/{m}/{stem}.png" for m in heatmap_models()
                  for stem in heatmap_stems(heatmap_count(), HEATMAP["layers"])]
    return ["results/figures/accuracy.png"] + [
        t.format(dataset=d, voice=v) for t in per_voice for d in states_datasets() for v in voices(d, "test")
    ]
