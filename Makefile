# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both create (or reuse) the virtualenv in $(VENV) and install the project into it, with every
# dependency pinned by requirements.lock (the versions the suite passed with).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install demo demo-video demo-vision test lint bench clean lock gpu-check

$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python 3.10+ is required"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --progress-bar off -c requirements.lock -e '.[dev,video]'
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/perceiver demo --out demo_out

# The video half end to end on the real clips in ../shared/data/video (about a minute on CPU).
demo-video: $(STAMP)
	$(BIN)/python tools/demo_video.py --out demo_out

# Images and optical flow end to end: a generated shape set and generated flow pairs, tiny models
# trained on CPU, `perceiver flow` on the real Sintel frames in ../shared/data/flow_frames.
demo-vision: $(STAMP)
	$(BIN)/python tools/demo_vision.py --out demo_out

test: $(STAMP)
	$(BIN)/python -m pytest tests $(PYTEST_ARGS)

# ruff, then the import structure: no cycles, no import against data_pipeline -> pretrain -> slurm.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python tools/check_imports.py

# One-shot check of the CUDA path on a GPU (tools/gpu_check.py; `--device cpu` runs it tiny).
gpu-check: $(STAMP)
	$(BIN)/python tools/gpu_check.py $(GPU_CHECK_ARGS)

# The reference implementations the benchmarks compare against (not needed for tests).
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet --no-deps --ignore-requires-python perceiver-io==0.11.0
	$(BIN)/python -m pip install --quiet einops fairscale
	$(BIN)/python tools/bench_model.py

# Re-resolve pyproject's ranges in a throw-away venv and write the pins to requirements.lock;
# then run `make test` (which reinstalls from the new lock) and commit both together.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --progress-bar off -e '.[dev,video]'
	{ sed -n '1,3p' requirements.lock; .lock-venv/bin/python -m pip freeze --exclude-editable \
	    | grep -v '^perceiver-pretrain'; } > requirements.lock.new
	mv requirements.lock.new requirements.lock && rm -rf .lock-venv

clean:
	rm -rf demo_out .pytest_cache
