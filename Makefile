# trajlake — the two commands: `make demo` and `make test`. Everything else is set up on the way.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test unit setup lock bench clean down notebooks

demo: $(STAMP)
	$(BIN)/trajlake demo

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

unit: $(STAMP)
	$(BIN)/python -m pytest -m unit $(PYTEST_ARGS)

setup: $(STAMP)

# The venv is rebuilt when the declared or locked dependencies change.
$(STAMP): pyproject.toml constraints.txt
	@command -v java >/dev/null || { echo "java not found: install a JDK 17 (apt-get install openjdk-17-jdk-headless)"; exit 1; }
	@command -v mvn >/dev/null  || { echo "mvn not found: install Maven (apt-get install maven)"; exit 1; }
	@# the collector's browser test drives Debian's chromium (no browser download is reachable)
	@command -v chromium >/dev/null || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium || { $$SUDO apt-get update && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; }; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip==24.3.1"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	$(BIN)/python -m pip check
	touch $(STAMP)

# Re-resolve the full pinned set from pyproject.toml (run after changing a pin).
lock:
	rm -rf /tmp/trajlake-lock && $(PYTHON) -m venv /tmp/trajlake-lock
	/tmp/trajlake-lock/bin/pip install --quiet "pip==24.3.1" && /tmp/trajlake-lock/bin/pip install --quiet -e ".[dev]"
	/tmp/trajlake-lock/bin/pip freeze --exclude-editable | grep -v '^-e' > constraints.txt

# every notebook executed against the demo lake (TRAJLAKE_* choose another); outputs in .trajlake/notebooks/
notebooks: $(STAMP)
	$(BIN)/python notebooks/run.py

# the benchmarks of bench/RESULTS.md, all or ONLY="export_speed jobs_speed" (bench/run.py --list names them)
bench: $(STAMP)
	$(BIN)/python bench/run.py $(ONLY)

down: $(STAMP)
	$(BIN)/trajlake down

clean: 
	-$(BIN)/trajlake down
	rm -rf .trajlake $(VENV)
