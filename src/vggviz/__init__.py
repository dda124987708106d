"""vggviz: see what a VGG network does to a photo.

The package imports nothing heavy at start-up so that ``vggviz --help`` stays instant;
torch, torchvision and matplotlib are imported by the modules that need them.
"""

__version__ = "0.1.0"
