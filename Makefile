VENV ?= .venv
PY := $(VENV)/bin/python
CORES ?= all
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: study figures report test bench-gpu lab-train clean-venv

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# The whole default study, then its HTML report (results/report.html).
study: $(VENV)/.installed
	$(VENV)/bin/snakemake --cores $(CORES)
	$(VENV)/bin/snakemake --cores $(CORES) --report results/report.html

# Re-plot from the cached tables: no model forward, no metric recomputation.
figures: $(VENV)/.installed
	$(VENV)/bin/snakemake --cores $(CORES) figures

report: $(VENV)/.installed
	$(VENV)/bin/snakemake --cores $(CORES) --report results/report.html

test: $(VENV)/.installed
	$(PY) -m pytest -q

# States dump, CKA, DTW and store writer on the GPU it finds (its CPU parts without one); appends a dated row to
# bench/README.md. BENCH_FLAGS: e.g. --quick, --layers 16 (bench/gpu.py).
bench-gpu: $(VENV)/.installed
	$(PY) bench/gpu.py $(BENCH_FLAGS)

# Retrain the lab model from scratch and re-export lab/checkpoints (after a recipe change).
lab-train: $(VENV)/.installed
	$(VENV)/bin/snakemake --cores $(CORES) --config 'lab={source: train}' --forcerun lab_export -- lab_export

clean-venv:
	rm -rf $(VENV)
