#!/usr/bin/env bash
# Builds the Swiss-Prot corpus (UniProtKB/Swiss-Prot 2014_01, ~516k distinct accessions) from
# Debian's metastudent-data, for benchmarks and longer training runs than the bundled sample.
#
#   scripts/build_swissprot_corpus.sh [OUTPUT_DIR]      (default: runs/corpora/swissprot)
#
# metastudent-data ships Swiss-Prot as three NCBI BLAST v4 databases (one per GO ontology:
# BPO, CCO, MFO) whose headers read ">ACCESSION|GO:...". This dumps all three with
# `blastdbcmd -entry all` (Debian ncbi-blast+), keeps each accession once, rewrites the header
# to the bare accession, and runs the Beam builder on the result. Needs root for apt-get
# (about 225 MB download, 780 MB installed).
set -euo pipefail

cd "$(dirname "$0")/.."
OUTPUT_DIR=${1:-runs/corpora/swissprot}
DATA=/usr/share/metastudent-data/dataset_201401
FASTA=runs/corpora/swissprot_2014_01.fasta.gz
PYTHON=${PYTHON:-.venv/bin/python}

if [ ! -d "$DATA" ] || ! command -v blastdbcmd >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq metastudent-data ncbi-blast+
fi

mkdir -p "$(dirname "$FASTA")"
tmp="$FASTA.partial"
for ontology in BPO CCO MFO; do
  blastdbcmd -db "$DATA/$ontology/goasp.fasta" -entry all -line_length 80
done | awk '
  /^>/ { accession = substr($1, 2); sub(/\|.*/, "", accession);
         keep = !(accession in seen); seen[accession] = 1;
         if (keep) print ">" accession; next }
  keep { print }' | gzip -1 > "$tmp"
mv "$tmp" "$FASTA"
echo "wrote $FASTA: $(zcat "$FASTA" | grep -c '>') sequences"

"$PYTHON" -m tfrecords_builder --input "$FASTA" --output_dir "$OUTPUT_DIR" \
  --num_shards 64 --validation_fraction 0.01 --overwrite
