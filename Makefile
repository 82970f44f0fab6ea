# `make lab`  : set up (first time) and open the course in JupyterLab.
# `make test` : set up (first time) and run every test, as CI does.
# `make mutate`: mutation testing of the numerical core, module by module (not part of `make test`).
# `make site` : build the course website in docs/_build/html (`make site FULL=1`: lessons in full mode).
# `make compat`: the package tests and lessons at Colab's versions and at the oldest declared ones.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# pip says only what went wrong (-qq): no progress bars, and none of setuptools' notes about
# editable installs, which a newcomer would take for an error.
PIP_FLAGS ?= -qq --disable-pip-version-check --progress-bar off
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

CHROMIUM := /usr/bin/chromium
BWRAP    := /usr/bin/bwrap

.PHONY: lab test test-full timings install lint format bench clean browser sandbox site mutate compat

install: $(STAMP)

# The first run (and any run after pyproject.toml or constraints.txt changed) sets up .venv.
$(STAMP): pyproject.toml constraints.txt
	@echo "Setting up $(VENV)/: the course's package with PyTorch (CPU), JupyterLab and the test tools."
	@echo "This happens once; it usually takes 1 to 3 minutes, most of it downloading PyTorch."
	@start=$$(date +%s) && \
	{ test -x $(BIN)/python || $(PYTHON) -m venv $(VENV); } && \
	$(BIN)/python -m pip install $(PIP_FLAGS) --upgrade pip && \
	$(BIN)/python -m pip install $(PIP_FLAGS) -c constraints.txt -e '.[dev]' && \
	touch $(STAMP) && \
	echo "Set up in $$(( $$(date +%s) - start )) s:" \
	     "$$($(BIN)/python -c 'import mlcourse, torch; print("mlcourse", mlcourse.__version__, "with torch", torch.__version__)')."

lab: $(STAMP)
	$(BIN)/jupyter lab $(ROOT_FLAG) --notebook-dir=notebooks

test: $(STAMP) browser sandbox site
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest
	MLCOURSE_FAST=1 $(BIN)/python -m pytest --nbval-lax --nbval-current-env notebooks/

# The course website: every lesson executed during the build (fast mode, MLCOURSE_FAST=1, unless
# FULL=1), the exercises as released, the reproduction report and the API reference. Any Sphinx
# warning fails it (a broken link, a missing image, a lesson that raises). Executed lessons are
# cached per mode in $(SITE)/ and run again when their code, the package or the install changes.
SITE       := docs/_build
SITE_FULL  := $(filter 1,$(FULL))
SITE_MODE  := $(if $(SITE_FULL),full,fast)
SITE_CACHE := $(SITE)/.jupyter_cache-$(SITE_MODE)

# MathJax is served from the site itself (no CDN): MathJax 3's browser build from the npm registry.
MATHJAX        := 3.2.2
MATHJAX_SHA256 := 1b9c0a1c44df864e915690558e72adb9cc5203360daefd385084ced3b6c64c09
MATHJAX_DIR    := $(SITE)/mathjax-$(MATHJAX)

site: $(STAMP) $(SITE_CACHE).stamp $(MATHJAX_DIR)/static/mathjax/tex-svg.js
	rm -rf docs/api/generated
	MLCOURSE_FAST=$(if $(SITE_FULL),0,1) SITE_EXECUTION_CACHE=$(SITE_CACHE) \
	SITE_MATHJAX=$(MATHJAX_DIR)/static $(BIN)/sphinx-build -b html -c docs \
		-d $(SITE)/doctrees-$(SITE_MODE) -E -W --keep-going . $(SITE)/html
	@echo "The site: $(SITE)/html/index.html"

$(MATHJAX_DIR)/static/mathjax/tex-svg.js:
	@command -v npm >/dev/null || { echo "make site fetches MathJax with npm:" \
		"run 'apt-get install -y npm' (Debian/Ubuntu) and then make site again."; exit 1; }
	rm -rf $(MATHJAX_DIR) && mkdir -p $(MATHJAX_DIR)/static
	cd $(MATHJAX_DIR) && npm pack --silent mathjax@$(MATHJAX) >/dev/null
	echo "$(MATHJAX_SHA256)  $(MATHJAX_DIR)/mathjax-$(MATHJAX).tgz" | sha256sum --check --quiet
	tar -xzf $(MATHJAX_DIR)/mathjax-$(MATHJAX).tgz -C $(MATHJAX_DIR)
	mv $(MATHJAX_DIR)/package/es5 $(MATHJAX_DIR)/static/mathjax
	cp $(MATHJAX_DIR)/package/LICENSE $(MATHJAX_DIR)/static/mathjax/LICENSE

$(SITE)/.jupyter_cache-%.stamp: $(STAMP) $(shell find mlcourse -type f -not -path '*/__pycache__/*')
	rm -rf $(SITE)/.jupyter_cache-$*
	mkdir -p $(SITE)
	touch $@

# The reproductions marked `full` (the shipped MetaGenRL objectives' report figures, about 12 min),
# then every lesson and solution top to bottom in full mode, as a learner runs them (about 25 min).
test-full: $(STAMP)
	$(BIN)/python -m pytest -m full -p no:cacheprovider tests/
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

# mutmut over each module of the numerical core with that module's own tests and doctests; prints
# module | killed | tried | score (survivors and their reasons: tests/mutation_survivors.md).
# `make mutate MUTATE="--jobs 1 rl/ppo reptile"` runs some modules, one test process at a time.
mutate: $(STAMP)
	$(BIN)/python tools/mutate.py $(MUTATE)

lint: $(STAMP)
	$(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The course where instructors run it, in two environments beside .venv under build/compat/
# (tools/compat.py): Colab's preinstalled versions (tests/colab-constraints.txt, ipywidgets 7)
# and the oldest versions pyproject.toml declares. In each: the package tests and every lesson in
# fast mode; in Colab's, `pip install --dry-run --report` of the course changes none of Colab's
# packages (tests/test_compat.py). Not part of `make test`.
compat: $(STAMP)
	@echo "make compat: builds build/compat/colab and build/compat/minimum when they are missing or"
	@echo "out of date (each about 5 GB, PyTorch's CUDA libraries most of it; 2 to 5 minutes), then"
	@echo "runs the package tests and the lessons in both: about 40 minutes in all on 2 cores."
	$(BIN)/python tools/compat.py
	$(BIN)/python -m pytest -m compat -p no:cacheprovider tests/test_compat.py

bench: $(STAMP)
	$(BIN)/mlcourse bench maml-sine

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info mutants
