# fewshot: `make demo` runs the whole pipeline on the embedded demo data; `make test` runs the tests.
# Both create/reuse .venv and install what they need. Versions are pinned here (ranges in pyproject).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.fewshot-installed
DEFAULT_DEMO_DATA := demo_data
DEFAULT_DEMO_RUN := runs/demo
DEMO_DATA ?= $(DEFAULT_DEMO_DATA)
DEMO_RUN ?= $(DEFAULT_DEMO_RUN)
BENCH_VENV ?= .bench-venv
DEMO_MINUTES ?= 3
TEST_WORKERS ?= 2

.PHONY: venv test demo demo-data bench clean help FORCE

help:
	@echo "make demo      - build demo data (digits, fashion-mnist); fewshot run (self-training), with MoCo, and the baseline; score"
	@echo "make test      - run the test suite"
	@echo "make bench     - MoCo speed benchmark against lightly (separate venv)"
	@echo "make demo-data - only build the demo datasets into DEMO_DATA (a dataset already there is kept)"
	@echo "make venv      - create VENV and install fewshot with its pinned torch (demo and test do this too)"
	@echo "make clean     - remove $(DEFAULT_DEMO_RUN) and $(DEFAULT_DEMO_DATA) (the next demo builds and runs everything again)"
	@echo "variables, e.g. make demo DEMO_MINUTES=10:"
	@echo "  VENV=$(VENV)  PYTHON=$(PYTHON) (makes the venv)  TORCH_PIN='$(TORCH_PIN)'"
	@echo "  DEMO_DATA=$(DEMO_DATA)  DEMO_RUN=$(DEMO_RUN)  DEMO_MINUTES=$(DEMO_MINUTES) (minutes per run)"
	@echo "  BENCH_VENV=$(BENCH_VENV) (make bench's venv)"
	@echo "  TEST_WORKERS=$(TEST_WORKERS) (make test's processes; 0: none, in one process)"

# the stamp records the pins it installed: another TORCH_PIN or PYTHON given later installs again (it said
# "Nothing to be done" while the old torch stayed); another PYTHON makes the venv anew (an older, empty stamp
# records none: installed again into the venv as it is)
PINS := $(PYTHON) | $(TORCH_PIN)
$(STAMP): pyproject.toml FORCE
	@if [ -f $(STAMP) ] && [ "$$(cat $(STAMP))" = '$(PINS)' ] && [ ! pyproject.toml -nt $(STAMP) ]; then exit 0; fi; \
	set -e; \
	if grep -q '|' $(STAMP) 2>/dev/null && [ "$$(cut -d'|' -f1 $(STAMP))" != '$(PYTHON) ' ]; then \
		echo "$(VENV) was made with $$(cut -d'|' -f1 $(STAMP) | sed 's/ *$$//'), not $(PYTHON): making it anew"; \
		$(PYTHON) -m venv --clear $(VENV); fi; \
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV); \
	echo "installing into $(VENV): $(TORCH_PIN) and fewshot"; \
	$(BIN)/python -m pip install -q --upgrade pip; \
	$(BIN)/python -m pip install -q $(TORCH_PIN); \
	$(BIN)/python -m pip install -q -e '.[dev]'; \
	echo '$(PINS)' > $(STAMP)

FORCE:

venv: $(STAMP)

test: venv
	$(BIN)/python -m pytest tests -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile --durations=10

demo-data: venv
	bash scripts/demo_data.sh $(BIN) $(DEMO_DATA)

demo: venv
	bash scripts/demo.sh $(BIN) $(DEMO_DATA) $(DEMO_RUN) $(DEMO_MINUTES)

bench: venv
	BENCH_VENV='$(BENCH_VENV)' bash benchmarks/setup_bench_venv.sh
	'$(BENCH_VENV)/bin/python' benchmarks/moco_speed.py

# Only the default folders: DEMO_DATA / DEMO_RUN may name a folder of the user's own, never ours to delete.
clean:
	@if [ '$(DEMO_DATA)' != '$(DEFAULT_DEMO_DATA)' ] || [ '$(DEMO_RUN)' != '$(DEFAULT_DEMO_RUN)' ]; then \
		echo "make clean removes only $(DEFAULT_DEMO_RUN) and $(DEFAULT_DEMO_DATA), and only without" \
		     "DEMO_DATA= or DEMO_RUN= (folders of your own are yours to remove); nothing was removed" >&2; \
		exit 2; \
	fi
	rm -rf -- $(DEFAULT_DEMO_RUN) $(DEFAULT_DEMO_DATA)
