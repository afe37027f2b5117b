# lynshim + lynanalyze. Two commands for a new machine: `make demo` and `make test`.
#
# Everything is installed into .venv/ from PyPI and crates.io: lynshim (built with maturin), lynanalyze
# (its binary, as a maturin `bindings = "bin"` wheel), and the lynguine version pinned in pyproject.toml.
# CARGO_TARGET_DIR may point outside the clone (CI reuses one under ~/.cache between runs).

PYTHON3 ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
export CARGO_TARGET_DIR ?= $(CURDIR)/target
DEMO := build/demo

.PHONY: all install demo test lint test-rust test-python perfetto-deps lamd-deps bench study study-deps clean

all: install

$(VENV)/.created: pyproject.toml
	$(PYTHON3) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "maturin>=1.9,<2"
	$(PIP) install --quiet $$($(PY) -c "import tomllib; print(' '.join(tomllib.load(open('pyproject.toml','rb'))['project']['optional-dependencies']['test']))")
	touch $@

# Built in release mode once; `cargo test --release` below reuses the same dependency builds.
# The exec-tracing preload library goes beside the package (maturin develop installs python/ in place,
# and the wheel includes it, see pyproject.toml); `lynshim run` runs without it, saying so. Copied
# without debug info (4.6 MB to 0.4 MB), and put in place by a rename, so that a process still running
# with the old file keeps its mapping intact.
# The `lynshim` command is native (crates/lynlaunch): the wheel installs it as its script from
# $(SCRIPTS) ([tool.maturin] data in pyproject.toml), stripped (0.5 MB less to map before every run).
PRELOAD := python/lynshim/_preload
SCRIPTS := build/wheel-data/scripts
install: $(VENV)/.created
	cargo build --release --quiet -p lynexec -p lynlaunch
	mkdir -p $(PRELOAD) && strip --strip-debug -o $(PRELOAD)/liblynexec.so.tmp $(CARGO_TARGET_DIR)/release/liblynexec.so
	mv -f $(PRELOAD)/liblynexec.so.tmp $(PRELOAD)/liblynexec.so
	mkdir -p $(SCRIPTS) && strip -o $(SCRIPTS)/lynshim.tmp $(CARGO_TARGET_DIR)/release/lynshim
	mv -f $(SCRIPTS)/lynshim.tmp $(SCRIPTS)/lynshim
	rm -f python/lynshim/_native.abi3.so  # left by builds before lynshim was built per Python version
	VIRTUAL_ENV=$(CURDIR)/$(VENV) $(VENV)/bin/maturin develop --release --quiet
	VIRTUAL_ENV=$(CURDIR)/$(VENV) $(VENV)/bin/maturin develop --release --quiet -m crates/lynanalyze/Cargo.toml

demo: install
	rm -rf $(DEMO) && mkdir -p $(DEMO) && cp -r tests/sample/. $(DEMO)/
	cd $(DEMO) && PATH=$(CURDIR)/$(VENV)/bin:$$PATH lynshim run -o traces --label demo -- make -s PYTHON=python
	@run=$$(ls -d $(DEMO)/traces/*/ | tail -n 1); \
	  $(VENV)/bin/lynanalyze report "$$run" -o $(DEMO)/report.md --format md >/dev/null; \
	  $(VENV)/bin/lynanalyze report "$$run"; \
	  echo; echo "traces: $$run (open any *.lynshim.json in https://ui.perfetto.dev)"; \
	  echo "report: $(DEMO)/report.md"

test: install perfetto-deps lamd-deps lint test-rust test-python

# The style the workspace configures, enforced: rustfmt (rustfmt.toml), clippy with the workspace lints
# and warnings as errors, ruff's linter and formatter ([tool.ruff] in pyproject.toml).
lint: $(VENV)/.created
	cargo fmt --all --check
	cargo clippy --all-targets -- -D warnings
	$(VENV)/bin/ruff check python tests analysis
	$(VENV)/bin/ruff format --check python tests analysis

# The Perfetto conformance tests need a browser; Playwright cannot download one here, so the system's
# Chromium is used. Installing it needs root: elsewhere those tests skip and say why (CI does not skip).
perfetto-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else echo "chromium is not installed and this is not root: the Perfetto conformance tests will skip"; fi; }

# One package per invocation: a test build unifies the features of its dev-dependencies with the rest,
# so testing lynload (criterion) beside lynanalyze would compile polars a third time. (The test build of
# lynanalyze cannot share polars with maturin's build of the binary for the same reason: insta.)
# insta finds its snapshots from the workspace root it is given at run time: a test binary reused from a
# shared CARGO_TARGET_DIR (CI's) was compiled in another clone, whose path it would otherwise use.
test-rust: export INSTA_WORKSPACE_ROOT := $(CURDIR)
test-rust:
	cargo test --release -p lynanalyze
	cargo test --release -p lynload
	cargo test --release -p lynschema -p lynshim -p lynexec -p lynlaunch

test-python:
	$(PY) -m pytest tests

# lamd runs gpp and pandoc (Debian packages). Where lamd is beside the clone, the tests that build real talks
# need them: installed as root when missing, like Chromium; elsewhere those tests skip and say why.
lamd-deps:
	@if [ -d "$(LAMD_SRC)/lamd" ]; then \
	  missing=""; for t in gpp pandoc; do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	  if [ -n "$$missing" ]; then \
	    if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	    else echo "lamd needs$$missing (Debian packages) and this is not root: install them first (the tests that build talks skip without them)"; fi; fi; fi

# Benchmarks against the peers, side by side; rewrites analysis/benchmarks.md. Never part of `make test`.
# lamd (from LAMD_SRC, never PyPI's) is installed when present, for the `mdfield` start-up case.
bench: install
	$(PIP) install --quiet "wrapt>=1.16" "viztracer==1.1.1"
	@if [ -d "$(LAMD_SRC)/lamd" ]; then $(PIP) install --quiet --no-deps "$(LAMD_SRC)" && \
	  $(PIP) install --quiet $$($(PY) -c "import tomllib; print(' '.join(tomllib.load(open('pyproject.toml','rb'))['project']['optional-dependencies']['study']))"); \
	  else echo "make bench: no lamd at LAMD_SRC=$(LAMD_SRC): the mdfield case is skipped"; fi
	cargo bench -p lynload --bench parse -- --noplot 2>&1 | tee build/criterion.txt
	$(PY) analysis/bench.py

# The study behind analysis/REPORT.md: real lamd builds of real talks, traced and analysed (analysis/study/).
# lamd and the talks are inputs, never copied into the project: LAMD_SRC is a lamd checkout, TALKS a folder
# with talks/ and snippets/. Raw traces go to build/study/; REPORT.md, figures/ and study-data/ are rewritten.
LAMD_SRC ?= $(abspath $(CURDIR)/../shared/lamd)
TALKS ?= $(abspath $(CURDIR)/../shared/corpus)
RUNS ?= 3
N ?= 5
STUDY_TALKS ?=
FORMATS ?= notes slides posts
VARIANT_FORMATS ?= notes
STUDY_OUT ?= build/study

study-deps:
	@test -d "$(LAMD_SRC)/lamd" || { echo "make study: no lamd at LAMD_SRC=$(LAMD_SRC) (expected a lamd checkout with a lamd/ package); run: make study LAMD_SRC=/path/to/lamd TALKS=/path/to/corpus"; exit 2; }
	@test -d "$(TALKS)/talks" || { echo "make study: no talks at TALKS=$(TALKS) (expected a folder with talks/ and snippets/); run: make study LAMD_SRC=/path/to/lamd TALKS=/path/to/corpus"; exit 2; }
	@$(MAKE) --no-print-directory lamd-deps
	@for t in gpp pandoc; do command -v $$t >/dev/null 2>&1 || { echo "make study: lamd needs $$t, not installed"; exit 2; }; done
	@$(MAKE) --no-print-directory $(VENV)/.created
	@test -x $(VENV)/bin/lynanalyze || $(MAKE) install
	$(PIP) install --quiet --no-deps "$(LAMD_SRC)"
	$(PIP) install --quiet $$($(PY) -c "import tomllib; print(' '.join(tomllib.load(open('pyproject.toml','rb'))['project']['optional-dependencies']['study']))")

study: study-deps
	$(PY) -m analysis.study --lamd-src "$(LAMD_SRC)" --talks "$(TALKS)" --runs $(RUNS) -n $(N) \
	  --formats "$(FORMATS)" --variant-formats "$(VARIANT_FORMATS)" --out $(STUDY_OUT) \
	  $(if $(STUDY_TALKS),--study-talks "$(STUDY_TALKS)")

clean:
	rm -rf build $(VENV) target $(PRELOAD)
