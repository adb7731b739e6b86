# The course in two commands:  make course  (run every notebook headless)  and  make test.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: course test setup lab doctor bench clean

course:            ## set up, then execute every notebook headless into build/ with a table of times
	scripts/setup.sh
	$(BIN)/course run

test:              ## set up with the test tools, then run the whole test suite (notebooks included)
	scripts/setup.sh --test
	$(BIN)/python -m pytest

setup:             ## only the set-up: .venv with the packages, and the dataset
	scripts/setup.sh

lab: setup         ## open JupyterLab on the course
	$(BIN)/course lab

doctor: setup      ## check versions, device and dataset
	$(BIN)/course doctor

bench: setup       ## course_utils.fit against the conventional DataLoader loop
	$(BIN)/python benchmarks/bench_training.py --epochs 3

clean:             ## remove run outputs (keeps the venv)
	rm -rf build .pytest_cache
