# make demo  : set up .venv from nothing (first time ~20 min: torch_cluster compiles), train the
#              main job, then draw its patch graphs (vig-pyg inspect)
# make test  : set up the same environment and run the test suite
# make bench : the speed benchmarks (ratios against a baseline measured in the same run)
# make detect-demo : train a small ViG detector on the built-in synthetic digits (CPU, ~10 min)
# make ablation: the aggregator ablation study on the digits, then its report (table + plots)
PY      := .venv/bin/python
PIP     := $(PY) -m pip --disable-pip-version-check
STAMP   := .venv/.installed
PINS    := requirements.txt
pin      = $(shell grep -E '^$(1)==' $(PINS))

.PHONY: install test test-all demo detect-demo ablation bench clean
install: $(STAMP)

# The stamp depends on the pins and the package metadata, so a second `make test`
# does not reinstall, and a changed pin does.
$(STAMP): $(PINS) setup.cfg pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install --upgrade pip setuptools wheel
	$(PIP) install "$(call pin,torch)" "$(call pin,torchvision)"
	MAX_JOBS=$$(nproc) $(PIP) install --no-build-isolation "$(call pin,torch-scatter)" "$(call pin,torch-cluster)"
	$(PIP) install -c $(PINS) -e ".[all]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m "slow or not slow"

# the demo trains, then draws the graphs its model builds on the digits' test split
demo: RUN := runs/demo-$(shell date +%Y%m%d-%H%M%S)
demo: $(STAMP)
	$(PY) -m vig_pyg train --config configs/demo.yaml --output $(RUN)
	$(PY) -m vig_pyg inspect --checkpoint $(RUN)/model.pt --images digits --output $(RUN)/inspect

detect-demo: $(STAMP)
	$(PY) -m vig_pyg detect train --config configs/detect_demo.yaml

bench: $(STAMP)
	$(PY) benchmarks/bench_knn.py
	$(PY) benchmarks/bench_conv.py
	$(PY) benchmarks/bench_conv.py --gather
	$(PY) benchmarks/bench_conv.py --projection
	$(PY) benchmarks/bench_batch_norm.py
	$(PY) benchmarks/bench_models.py --convs mr edge sage gin
	$(PY) benchmarks/bench_models.py --breakdown --modes infer --convs mr edge sage gin
	$(PY) benchmarks/bench_fast_paths.py --modes forward train
	$(PY) benchmarks/bench_fast_paths.py --modes train --conv gin
	$(PY) benchmarks/bench_floor.py
	$(PY) benchmarks/bench_graphs.py
	$(PY) benchmarks/bench_pyg_convs.py
	$(PY) benchmarks/bench_detection.py

clean:
	rm -rf .venv build *.egg-info src/*.egg-info

# The aggregator ablation on the embedded digits (27 short runs), then its report in
# runs/aggregators (table.md, results.csv, PNG plots). Running it again continues the sweep.
ablation: $(STAMP)
	$(PY) -m vig_pyg sweep experiments/aggregators.yaml --jobs 2 --output runs/aggregators
