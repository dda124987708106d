"""``vggviz features`` and ``vggviz filters``: feature-map and filter pictures."""
