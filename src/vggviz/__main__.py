"""``python -m vggviz``."""

from vggviz.cli import main

main()
