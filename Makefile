# Every target creates .venv from requirements.txt when it is missing or out of date.
PY      ?= python3
VENV    := .venv
PYBIN   := $(VENV)/bin/python
STAMP   := $(VENV)/.installed

.PHONY: demo test e2e screenshots bench phantoms clean

$(STAMP): requirements.txt
	test -x $(PYBIN) || $(PY) -m venv $(VENV)
	$(PYBIN) -m pip install -q -r requirements.txt
	touch $(STAMP)

# The main job: start the app, training the demo run on synthetic phantoms in the background first if it is
# not complete yet (checkpoints/demo/ensemble_stack/card.json); the app opens after the first model (demo.py).
demo: $(STAMP)
	$(PYBIN) demo.py

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PYBIN) -m pytest -q tests

# Browser test alone (Debian chromium + Playwright); `make test` runs it too when chromium is present.
e2e: $(STAMP)
	HF_HUB_OFFLINE=1 $(PYBIN) -m pytest -q tests/test_e2e.py

# README screenshots, taken by the browser test against the demo run.
screenshots: $(STAMP)
	E2E_CHECKPOINTS=checkpoints E2E_SCREENSHOTS=dashboard/assets HF_HUB_OFFLINE=1 $(PYBIN) -m pytest -q tests/test_e2e.py

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(PYBIN) benchmarks/run_all.py

phantoms: $(STAMP)
	$(PYBIN) -m core.phantom --out data/phantoms --n 400 --size 256 --seed 0

clean:
	rm -rf $(VENV) .pytest_cache
