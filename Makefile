# Two entry points for a new user, both self-installing into .venv:
#   make demo   build TFRecords from the bundled UniProtKB sample with the Beam builder and
#               show one decoded, packed batch per pre-training objective
#   make test   run the test suite
# Installation is idempotent: it reruns only when pyproject.toml changes.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
DEMO_DIR ?= runs/demo
SAMPLE := data/sample/uniprot_sample.fasta.gz

export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: install system-deps demo test benchmark clean

install: $(STAMP)

# Debian tools the tests use (shellcheck for tpu_launch/); installed when running as root,
# otherwise the tests that need them skip and say why.
system-deps:
	@command -v shellcheck >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	    && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck) \
	    || echo "shellcheck unavailable: its tests will skip"; }

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

demo: install
	$(PY) -m tfrecords_builder --input $(SAMPLE) --output_dir $(DEMO_DIR)/corpus \
	    --num_shards 4 --validation_fraction 0.05 --overwrite
	$(PY) -m tasks.show_batches --corpus_dir $(DEMO_DIR)/corpus --corpus_name sample \
	    --batch_size 2 --inputs_length 128

test: install system-deps
	$(PY) -m pytest -q tests

benchmark: install
	$(PY) benchmarks/builder_throughput.py

clean:
	rm -rf $(VENV) runs
