VENV ?= .venv
PY := $(VENV)/bin/python
CORES ?= all
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: study test lab-train clean-venv

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

study: $(VENV)/.installed
	$(VENV)/bin/snakemake --cores $(CORES)

test: $(VENV)/.installed
	$(PY) -m pytest -q

# Retrain the lab model from scratch and re-export lab/checkpoints (after a recipe change).
lab-train: $(VENV)/.installed
	$(VENV)/bin/snakemake --cores $(CORES) --config 'lab={source: train}' --forcerun lab_export -- lab_export

clean-venv:
	rm -rf $(VENV)
