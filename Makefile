# Every target creates .venv from requirements.txt when it is missing or out of date.
PY      ?= python3
VENV    := .venv
PYBIN   := $(VENV)/bin/python
STAMP   := $(VENV)/.installed

.PHONY: demo test e2e bench phantoms clean

$(STAMP): requirements.txt
	test -x $(PYBIN) || $(PY) -m venv $(VENV)
	$(PYBIN) -m pip install -q --upgrade pip
	$(PYBIN) -m pip install -q -r requirements.txt
	touch $(STAMP)

# The main job: train the demo run on synthetic phantoms if none exists yet.
demo: $(STAMP)
	test -f checkpoints/demo/split.csv || $(PYBIN) train.py
	@echo "Demo run ready in checkpoints/demo/."

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PYBIN) -m pytest -q tests

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(PYBIN) benchmarks/run_all.py

phantoms: $(STAMP)
	$(PYBIN) -m core.phantom --out data/phantoms --n 400 --size 256 --seed 0

clean:
	rm -rf $(VENV) .pytest_cache
