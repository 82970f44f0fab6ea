# `make lab`  : set up (first time) and open the course in JupyterLab.
# `make test` : set up (first time) and run every test, as CI does.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP_FLAGS ?= --quiet --disable-pip-version-check --progress-bar off
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

CHROMIUM := /usr/bin/chromium
BWRAP    := /usr/bin/bwrap

.PHONY: lab test test-full timings install lint format bench clean browser sandbox

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install $(PIP_FLAGS) --upgrade pip
	$(BIN)/python -m pip install $(PIP_FLAGS) -c constraints.txt -e '.[dev]'
	touch $(STAMP)

lab: $(STAMP)
	$(BIN)/jupyter lab $(ROOT_FLAG) --notebook-dir=notebooks

test: $(STAMP) browser sandbox
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest
	MLCOURSE_FAST=1 $(BIN)/python -m pytest --nbval-lax --nbval-current-env notebooks/

# Every lesson and solution top to bottom in full mode, as a learner runs them (about 25 min).
test-full: $(STAMP)
	$(BIN)/python -m pytest --nbval-lax --nbval-current-env -p no:cacheprovider notebooks/ solutions/

# Each lesson's stated runtime (full and fast) against a fresh measurement; run it idle.
timings: $(STAMP)
	$(BIN)/python -m mlcourse.course timings

# The browser test drives Debian's Chromium (Playwright's own browser download is not used).
browser: $(CHROMIUM)

$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else \
		echo "The browser test needs Chromium at $(CHROMIUM): run 'sudo apt-get install -y chromium'" \
		     "(Debian/Ubuntu) and then 'make test' again."; exit 1; \
	fi

# `mlcourse grade` runs each submission inside bubblewrap (Debian's bubblewrap package).
sandbox: $(BWRAP)

$(BWRAP):
	@if [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap; \
	else \
		echo "The grading tests need bubblewrap at $(BWRAP): run 'sudo apt-get install -y bubblewrap'" \
		     "(Debian/Ubuntu) and then 'make test' again."; exit 1; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/mlcourse bench maml-sine

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
