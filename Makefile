# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both create (or reuse) the virtualenv in $(VENV) and install the project into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install demo demo-video test lint bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python 3.10+ is required"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --progress-bar off -e '.[dev,video]'
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/perceiver demo --out demo_out

# The video half end to end on the real clips in ../shared/data/video (about a minute on CPU).
demo-video: $(STAMP)
	$(BIN)/python tools/demo_video.py --out demo_out

test: $(STAMP)
	$(BIN)/python -m pytest tests $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

# The reference implementations the benchmarks compare against (not needed for tests).
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet --no-deps --ignore-requires-python perceiver-io==0.11.0
	$(BIN)/python -m pip install --quiet einops fairscale
	$(BIN)/python tools/bench_model.py

clean:
	rm -rf demo_out .pytest_cache
