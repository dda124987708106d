"""vggviz's vocabulary: the architectures it knows, with torchvision's ImageNet checkpoint
for each and their conv widths, and every named choice an option can take.

Plain data with no heavy imports, so the command line can offer the choices (and check a run's
memory) without loading torch. The library's modules take their names from here.
"""

from dataclasses import dataclass

ARCHS = ("vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn")
DEFAULT_ARCH = "vgg16_bn"  # for ImageNet and random weights; a file's own is found from it

# torchvision's ImageNet checkpoint file names (the 8 hex digits are their sha256 prefix)
IMAGENET_FILES = {
    "vgg11": "vgg11-8a719046.pth",
    "vgg11_bn": "vgg11_bn-6002323d.pth",
    "vgg13": "vgg13-19584684.pth",
    "vgg13_bn": "vgg13_bn-abd245e5.pth",
    "vgg16": "vgg16-397923af.pth",
    "vgg16_bn": "vgg16_bn-6c64b313.pth",
    "vgg19": "vgg19-dcbb9e9d.pth",
    "vgg19_bn": "vgg19_bn-c79401a0.pth",
}

# conv widths per block; each block ends in a 2x2 max-pool (Simonyan & Zisserman, table 1)
BLOCKS = {
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


def blocks(arch: str) -> tuple[tuple[int, ...], ...]:
    """Conv widths per pooling block of ``arch`` (with or without ``_bn``)."""
    return BLOCKS[arch.removesuffix("_bn")]


MODES = ("network", "chain")  # the real forward pass, or the tutorial's conv-only chain
STAGES = ("conv", "bn", "relu")  # where in a conv layer the network mode takes its map
SCALES = ("layer", "map")  # one robust scale per layer, or each map stretched on its own
SELECTS = ("top", "first")  # the strongest channels by mean activation, or the first ones
PRECISIONS = ("fp32", "bf16")  # arithmetic of the forward pass
VIEWS = ("rgb", "channel", "mean")  # how a filter picture draws a kernel's input channels
REDUCES = ("max", "mean")  # how a map is reduced to one number per channel


@dataclass(frozen=True)
class ModelSpec:
    """Which model a command runs: the model options every command shares, parsed."""

    arch: str | None = None  # None: found from the weights file; vgg16_bn for the others
    weights: str = "imagenet"  # imagenet, random, or a weights file
    seed: int = 0  # for random weights
    device: str = "auto"
    precision: str = "fp32"
    trust_checkpoint: bool = False  # load files that run code when loaded (the user's own)

    def arch_bound(self) -> str:
        """The architecture for what is planned before the weights are read (the memory
        estimate): the one asked for, vgg16_bn for imagenet and random weights, and for a
        file the one with the most maps (vgg19_bn), an upper bound."""
        if self.arch:
            return self.arch
        return DEFAULT_ARCH if self.weights in ("imagenet", "random") else "vgg19_bn"


# The jobs, with the names each leaves in its output folder. Two jobs in one folder would
# write over each other's index.html, so a folder belongs to one job: a marker file names it,
# and these names tell the job of a folder written before markers existed.
JOB_FILES = {
    "features": ("manifest*.jsonl",),
    "top": ("top.json", "top-scan*"),
    "explain": (),  # newer than the marker: its folders always have one
}

# Tile sizes of a layer picture, here so that core/memory can bound a picture's bytes without
# importing the drawing code (numpy, Pillow): small maps are enlarged (nearest) to about
# TILE_TARGET pixels, huge ones reduced to at most TILE_MAX, and a grid row never passes
# GRID_WIDTH pixels before its tiles shrink.
TILE_TARGET = 224
TILE_MAX = 768
GRID_WIDTH = 3600

# Style defaults by mode: chain mode reproduces the tutorial's picture exactly (first 16
# channels, grey, each map stretched on its own); network mode shows the most active
# channels on one honest scale per layer.
STYLE_DEFAULTS = {
    "network": {"select": "top", "cmap": "inferno", "scale": "layer"},
    "chain": {"select": "first", "cmap": "gray", "scale": "map"},
}
