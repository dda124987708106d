"""The baseline of ``bench_explain.py``: Grad-CAM over a folder as pytorch-grad-cam's README
shows it (https://github.com/jacobgil/pytorch-grad-cam, "Using from code as a library"), for
VGG16-BN at conv13 after its ReLU (``features[42]``, the map ``vggviz explain`` explains), the
top class of each photo (``targets=None``), one overlay PNG per photo.

Needs ``grad-cam`` and what it imports, which the bench installs in its own folder
(benchmarks/.cache/gradcam) and puts on PYTHONPATH: never a dependency of vggviz.

Usage: python benchmarks/gradcam_readme.py FOLDER OUT [--seed 0]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import preprocess_image, show_cam_on_image
from torchvision.models import vgg16_bn


def main() -> None:
    folder, out = Path(sys.argv[1]), Path(sys.argv[2])
    seed = int(sys.argv[sys.argv.index("--seed") + 1]) if "--seed" in sys.argv else 0
    out.mkdir(parents=True, exist_ok=True)
    # The README loads ImageNet weights; offline, the same network with torchvision's seeded
    # random init (the arithmetic, and so the time, is the same).
    torch.manual_seed(seed)
    model = vgg16_bn(weights=None).eval()
    target_layers = [model.features[42]]  # the ReLU after conv13
    with GradCAM(model=model, target_layers=target_layers) as cam:  # built once, for speed
        for path in sorted(folder.glob("*.jpg")):
            rgb_img = np.float32(Image.open(path).convert("RGB")) / 255
            input_tensor = preprocess_image(
                rgb_img, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]
            )
            grayscale_cam = cam(input_tensor=input_tensor, targets=None)[0, :]
            visualization = show_cam_on_image(rgb_img, grayscale_cam, use_rgb=True)
            Image.fromarray(visualization).save(out / f"{path.stem}.png")


if __name__ == "__main__":
    main()
