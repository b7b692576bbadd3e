"""Known releases: one JSON manifest per release (see docs/manifests.md)."""
