"""Author snapshots and the layered (L1 → Redis → MongoDB) cache; the bottom room, importing nothing above."""
