"""The architectures vggviz knows and torchvision's ImageNet checkpoint for each.

Plain data with no imports, so the command line can offer the choices without loading torch.
"""

ARCHS = ("vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn")

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

# Picture defaults that depend on the mode: chain mode reproduces the tutorial's picture
# (first 16 channels, grey, each map stretched on its own); network mode shows the most active
# channels on one honest scale per layer.
STYLE_DEFAULTS = {
    "network": {"select": "top", "cmap": "inferno", "scale": "layer"},
    "chain": {"select": "first", "cmap": "gray", "scale": "map"},
}
