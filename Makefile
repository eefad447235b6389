# gauntlet: the two set-up commands are `make run` (the main job) and `make test` (the tests).
# Both work on a fresh machine: `setup` installs the Rust toolchain components they need.

CARGO ?= cargo
SUITE ?= suites/quickstart.toml
GAUNTLET := target/release/gauntlet

.PHONY: run test setup build bench fmt lint train-maxout reproduce reproduce-maxout clean check-cuda bench-venv bench-compare bench-compare-paired

setup:
	@command -v $(CARGO) >/dev/null 2>&1 || { \
		echo "installing the Rust toolchain (rustup)"; \
		command -v curl >/dev/null 2>&1 || { apt-get update && apt-get install -y curl; }; \
		curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal; }
	@$(CARGO) fmt --version >/dev/null 2>&1 || rustup component add rustfmt clippy

build: setup
	$(CARGO) build --release -p gauntlet

# The main job: suites/quickstart.toml on the embedded MNIST (three Maxout MLPs trained,
# attacked, compared by transfer and noise) into results/quickstart/, then the report in
# report/quickstart/.
run: build
	$(GAUNTLET) run $(SUITE)
	$(GAUNTLET) report results/$(notdir $(basename $(SUITE)))

# A headless-Chromium screenshot of the suite's report/NAME/index.html, to check by eye that it
# renders (not part of `make test`; needs Debian's chromium). SHOT sets the output file.
SHOT ?= target/report-$(notdir $(basename $(SUITE))).png
.PHONY: report-screenshot
report-screenshot:
	scripts/screenshot-report.sh report/$(notdir $(basename $(SUITE))) $(SHOT)

# The Maxout MLP alone with the short recipe (<= 1.3% test error): results/maxout-short/.
train-maxout: build
	$(GAUNTLET) train --config suites/train/maxout-short.toml

test: setup
	$(CARGO) test --workspace --release
	$(MAKE) python-test

# The Python package (crates/python, docs/python.md) built into a venv of pinned maturin,
# NumPy and pytest (.venv-python), then its tests. `make python` alone builds and installs it.
VENV_PYTHON := .venv-python
.PHONY: python python-test
$(VENV_PYTHON)/.installed: crates/python/requirements-test.txt
	rm -rf $(VENV_PYTHON)
	python3 -m venv $(VENV_PYTHON)
	$(VENV_PYTHON)/bin/pip install --no-input --quiet -r crates/python/requirements-test.txt
	touch $@

python: setup $(VENV_PYTHON)/.installed
	VIRTUAL_ENV=$(CURDIR)/$(VENV_PYTHON) $(VENV_PYTHON)/bin/maturin develop --release --quiet \
		-m crates/python/Cargo.toml

# Throughput of one attack from Python against the CLI's (BENCHMARKS.md); on an idle machine.
.PHONY: python-bench
python-bench: python
	$(CARGO) build --release -p gauntlet
	$(VENV_PYTHON)/bin/python crates/python/bench/throughput.py $(PYTHON_BENCH_ARGS)

# The tests compare with the CLI binary; `make test` has just built it with the workspace's
# features (building it again here alone would rebuild Candle with other features).
python-test: python
	test -x $(GAUNTLET) || $(CARGO) build --release -p gauntlet
	$(VENV_PYTHON)/bin/python -m pytest crates/python/tests -q

# Long fuzzing run (proptest) of the suite parser and the data and checkpoint loaders:
# FUZZ_CASES inputs per property (`make test` tries 256); prints the counts of each outcome.
FUZZ_CASES ?= 100000
.PHONY: fuzz
fuzz: setup
	PROPTEST_CASES=$(FUZZ_CASES) $(CARGO) test --release -p gauntlet-suite --test it fuzz -- --nocapture
	PROPTEST_CASES=$(FUZZ_CASES) $(CARGO) test --release -p gauntlet-data -p gauntlet-models --test fuzz -- --nocapture

# The Slurm scale-out test (docs/scale-out.md): a real one-node Slurm cluster on this machine
# runs suites/ci-slurm.toml as job arrays and the merged results must equal one process's.
# Needs root; installs Debian's slurm-wlm and munge if missing. About a minute once built.
.PHONY: test-slurm
test-slurm: setup
	CARGO=$(CARGO) scripts/slurm-test.sh

# The matrix products on a CPU without AVX-512 (gemm's run-time fallback to its AVX2/FMA
# kernels): the CPU-feature, kernel and PyTorch-fixture tests under QEMU's user-mode emulator
# of such a CPU, where tests/cpu_features.rs checks that AVX-512 is indeed absent. Installs
# Debian's qemu-user if missing; GAUNTLET_NO_AVX512_OPTIONAL=1 skips where it cannot.
.PHONY: test-no-avx512
test-no-avx512: setup
	@command -v qemu-x86_64 >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq qemu-user; } \
		|| { [ -n "$$GAUNTLET_NO_AVX512_OPTIONAL" ] && echo "SKIPPED: qemu-user not installable"; }
	@if command -v qemu-x86_64 >/dev/null 2>&1; then \
		GAUNTLET_EXPECT_AVX512=0 CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="qemu-x86_64 -cpu max" \
			$(CARGO) test --workspace --release --test cpu_features --test kernels --test torch_fixtures; \
	fi

# The `cuda` feature built (binary + every test) with nvcc but no GPU, in target/cuda; installs
# Debian's nvidia-cuda-toolkit if nvcc is missing. CUDA_COMPUTE_CAP=86 etc. overrides the
# default 80; CHECK_CUDA_MODE=check only type-checks. See scripts/check-cuda.sh.
check-cuda: setup
	CARGO=$(CARGO) scripts/check-cuda.sh

# Throughput of the training and attack workloads (crates/bench; BENCHMARKS.md says what is
# measured). Run it on an idle machine. THREADS sets the compute threads of gauntlet and of
# PyTorch alike; BENCH_ARGS passes options to both (e.g. --models maxout-mlp --rounds 3).
THREADS ?= $(shell nproc 2>/dev/null || echo 1)
BENCH_ARGS ?=
BENCH_OUT := target/bench
VENV_BENCH := .venv-bench

bench: setup
	$(CARGO) build --release -p gauntlet-bench
	target/release/gauntlet-bench --threads $(THREADS) --json $(BENCH_OUT)/gauntlet-$(THREADS)t.jsonl $(BENCH_ARGS)

# PyTorch (pinned, from PyPI) in .venv-bench for the comparison: about 5 GB.
bench-venv: $(VENV_BENCH)/.installed

$(VENV_BENCH)/.installed:
	python3 -m venv $(VENV_BENCH)
	$(VENV_BENCH)/bin/pip install --no-input torch==2.15.0 numpy==2.4.6
	touch $@

# gauntlet's benchmark, then the same workloads in PyTorch (one after the other, never side
# by side), then the table of throughput ratios gauntlet / PyTorch.
bench-compare: bench-venv
	$(MAKE) bench
	$(VENV_BENCH)/bin/python bench/torch_reference.py --threads $(THREADS) --json $(BENCH_OUT)/pytorch-$(THREADS)t.jsonl $(BENCH_ARGS)
	python3 bench/compare.py $(BENCH_OUT)/gauntlet-$(THREADS)t.jsonl $(BENCH_OUT)/pytorch-$(THREADS)t.jsonl

# The same comparison model by model, gauntlet's run and PyTorch's back to back, REPEATS
# times; compare.py pairs the runs and takes the median of the pairs' ratios. On a host whose
# speed drifts between minutes, both sides of a pair see the same host. BENCH_MODELS picks
# the models (not --models in BENCH_ARGS); each program measures its sgemm peak once.
REPEATS ?= 2
BENCH_MODELS ?= maxout-mlp mlp conv-maxout cnn smallcnn smallcnn-onnx
bench-compare-paired: bench-venv
	$(CARGO) build --release -p gauntlet-bench
	@set -e; mkdir -p $(BENCH_OUT); \
	g=$(BENCH_OUT)/gauntlet-$(THREADS)t-paired.jsonl; p=$(BENCH_OUT)/pytorch-$(THREADS)t-paired.jsonl; \
	one=$(BENCH_OUT)/one-run.jsonl; rm -f $$g $$p; \
	for r in $$(seq $(REPEATS)); do for m in $(BENCH_MODELS); do \
		echo "repeat $$r, $$m"; \
		peak=--no-peak; [ -s $$g ] || peak=; \
		target/release/gauntlet-bench --threads $(THREADS) --models $$m $$peak --json $$one $(BENCH_ARGS) >/dev/null; \
		cat $$one >> $$g; \
		peak=--no-peak; [ -s $$p ] || peak=; \
		$(VENV_BENCH)/bin/python bench/torch_reference.py --threads $(THREADS) --models $$m $$peak --json $$one $(BENCH_ARGS) >/dev/null; \
		cat $$one >> $$p; \
	done; done; rm -f $$one; \
	python3 bench/compare.py $$g $$p

# The PyTorch fixture models the tests load (crates/models/tests/fixtures/torch; committed):
# scripts/make_fixtures.py in a pinned virtual environment with PyTorch, ONNX, torchattacks and
# maturin (about 5 GB). Not part of `make test`. FIXTURE_ARGS=--torchattacks 1000 also prints
# torchattacks' PGD on the trained SmallCNN.
VENV_FIXTURES := .venv-fixtures
FIXTURE_ARGS ?=
.PHONY: fixtures
fixtures: $(VENV_FIXTURES)/.installed
	$(VENV_FIXTURES)/bin/python scripts/make_fixtures.py $(FIXTURE_ARGS)

$(VENV_FIXTURES)/.installed:
	python3 -m venv $(VENV_FIXTURES)
	$(VENV_FIXTURES)/bin/pip install --no-input torch==2.15.0 numpy==2.4.6 onnx==1.23.2 \
		onnxscript==0.7.2 safetensors==0.8.0 torchattacks==3.5.1 maturin==1.16.0
	touch $@

# docs/python.md's worked example: a small PyTorch CNN trained, exported to ONNX and attacked
# by gauntlet and torchattacks side by side, in the fixtures venv with gauntlet built into it.
.PHONY: python-example
python-example: $(VENV_FIXTURES)/.installed
	VIRTUAL_ENV=$(CURDIR)/$(VENV_FIXTURES) $(VENV_FIXTURES)/bin/maturin develop --release --quiet \
		-m crates/python/Cargo.toml
	$(VENV_FIXTURES)/bin/python crates/python/examples/torch_side_by_side.py $(EXAMPLE_ARGS)

# docs/crosscheck.md: a Maxout MLP trained in PyTorch, attacked by gauntlet, torchattacks and
# Foolbox on the same weights (bench/crosscheck; run by hand, about 15 minutes on two cores).
# Its venv pins every package (bench/crosscheck/requirements.txt, about 5 GB); the tables go
# to bench/crosscheck/results. CROSSCHECK_ARGS passes options (e.g. --epochs 5 --test 200).
VENV_CROSSCHECK := .venv-crosscheck
CROSSCHECK_ARGS ?=
.PHONY: crosscheck
crosscheck: $(VENV_CROSSCHECK)/.installed
	VIRTUAL_ENV=$(CURDIR)/$(VENV_CROSSCHECK) $(VENV_CROSSCHECK)/bin/maturin develop --release \
		--quiet -m crates/python/Cargo.toml
	CUDA_VISIBLE_DEVICES= $(VENV_CROSSCHECK)/bin/python bench/crosscheck/crosscheck.py $(CROSSCHECK_ARGS)

$(VENV_CROSSCHECK)/.installed: bench/crosscheck/requirements.txt
	python3 -m venv $(VENV_CROSSCHECK)
	$(VENV_CROSSCHECK)/bin/pip install --no-input -r bench/crosscheck/requirements.txt
	touch $@

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The paper's experiment (suites/mnist-paper.toml) and the reduced conv-MNIST and CIFAR-10
# runs, each with its report: results/NAME/ and report/NAME/. Resumable: an interrupted run
# picks up where it stopped (finished jobs are cached, training resumes from its last epoch).
# One single-thread job per core by default (`gauntlet run`'s default); REPRODUCE_JOBS sets it.
REPRODUCE_JOBS ?= $(shell nproc 2>/dev/null || echo 1)
REPRODUCE_SUITES ?= mnist-paper mnist-conv cifar10
reproduce: build
	@for s in $(REPRODUCE_SUITES); do \
		$(GAUNTLET) run suites/$$s.toml --jobs $(REPRODUCE_JOBS) || exit 1; \
		$(GAUNTLET) report results/$$s || exit 1; \
	done

# The full pylearn2 recipe (mnist_pi.yaml then mnist_pi_continued.yaml): stage 1 trains on 50k
# with early stopping (patience 100 epochs), stage 2 continues from its best model on all 60k
# until the training objective matches stage 1's. Many hours on 2 cores.
reproduce-maxout: build
	$(GAUNTLET) train --config suites/train/maxout-pylearn2.toml
	$(GAUNTLET) train --config suites/train/maxout-pylearn2-stage2.toml --continue-from results/maxout-pylearn2

clean:
	$(CARGO) clean

# Builds the Dockerfile's image (gauntlet:latest, what deploy/k8s/ runs) and runs a tiny
# suite in it against the repository's data/ folder. Needs a running Docker daemon that can
# pull rust and debian images; elsewhere it prints SKIPPED.
.PHONY: docker-smoke
docker-smoke:
	@if ! docker info >/dev/null 2>&1; then echo "docker-smoke: SKIPPED (no Docker daemon)"; exit 0; fi; \
	docker build -t gauntlet:latest . && \
	docker run --rm -v "$(CURDIR)/data:/work/data:ro" -v "$(CURDIR)/suites:/work/suites:ro" \
		gauntlet:latest run suites/ci-slurm.toml --results /tmp/results --quiet && \
	echo "docker-smoke: 1 passed"
