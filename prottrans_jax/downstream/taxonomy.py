"""Domain of life (archaea, bacteria, eukaryota, viruses) of NCBI TaxIds, from nodes.dmp.

The NCBI taxonomy ships in Debian `emboss-data` (/usr/share/EMBOSS/data/TAXONOMY); any folder
with NCBI's nodes.dmp (and optionally merged.dmp) works.
"""

from pathlib import Path

DEFAULT_TAXONOMY_DIR = Path("/usr/share/EMBOSS/data/TAXONOMY")
DOMAINS = {2: "bacteria", 2157: "archaea", 2759: "eukaryota", 10239: "viruses"}
UNKNOWN = "unknown"


class Taxonomy:
    """Parent links of the NCBI tree; `domain(taxid)` walks up to a domain of life."""

    def __init__(self, taxonomy_dir=DEFAULT_TAXONOMY_DIR):
        taxonomy_dir = Path(taxonomy_dir)
        nodes = taxonomy_dir / "nodes.dmp"
        if not nodes.is_file():
            raise FileNotFoundError(
                f"{nodes}: NCBI taxonomy not found (apt-get install emboss-data, "
                "or pass a folder with nodes.dmp)"
            )
        self.parent = {}
        with open(nodes) as f:
            for line in f:
                child, parent = line.split("\t|\t", 2)[:2]
                self.parent[int(child)] = int(parent)
        self.merged = {}
        merged = taxonomy_dir / "merged.dmp"
        if merged.is_file():
            with open(merged) as f:
                for line in f:
                    old, new = line.rstrip("\t|\n").split("\t|\t")[:2]
                    self.merged[int(old)] = int(new)

    def domain(self, taxid):
        """'bacteria' | 'archaea' | 'eukaryota' | 'viruses' | 'unknown' (missing or other)."""
        if taxid is None:
            return UNKNOWN
        node = self.merged.get(taxid, taxid)
        for _ in range(100):
            if node in DOMAINS:
                return DOMAINS[node]
            parent = self.parent.get(node)
            if parent is None or parent == node:
                return UNKNOWN
            node = parent
        return UNKNOWN
