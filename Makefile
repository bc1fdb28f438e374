# Two entry points for a new user, both self-installing into .venv:
#   make demo   build TFRecords from the bundled UniProtKB sample with the Beam builder, show
#               one decoded, packed batch per pre-training objective, train tiny ProtT5 on it
#   make test   run the test suite
# Installation is idempotent: it reruns only when pyproject.toml changes.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
DEMO_DIR ?= runs/demo
SAMPLE := data/sample/uniprot_sample.fasta.gz

.PHONY: install system-deps demo test benchmark clean

install: $(STAMP)

# Debian packages the tests use: shellcheck (tpu_launch/) and emboss-data (the NCBI taxonomy
# for t-SNE colouring). Installed when running as root; otherwise their tests skip and say why.
system-deps:
	@if command -v shellcheck >/dev/null && [ -f /usr/share/EMBOSS/data/TAXONOMY/nodes.dmp ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck emboss-data; \
	else echo "shellcheck / emboss-data unavailable: their tests will skip"; fi

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
	$(PY) -m prottrans_jax.demo --model_dir=$(DEMO_DIR)/model

# 2 worker processes by default (CI has 2 cores; each worker needs up to ~6 GiB): TEST_WORKERS=0
# runs in one process.
TEST_WORKERS ?= 2
test: install system-deps
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

benchmark: install
	$(PY) benchmarks/builder_throughput.py
	$(PY) benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) runs
