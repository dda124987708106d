"""The tutorial's pipeline as a script: the baseline that vggviz is measured against.

A re-implementation of the Chinese blog post "VGG16-BN feature maps" (see
/work/shared/seed/vgg16_bn_feature_maps_tutorial.txt), kept faithful in what it computes and
draws so that its time and memory are what a user of the tutorial would pay:

- torch, torchvision and matplotlib.pyplot are imported up front;
- ``vgg16_bn`` is built in full (random init) and then loaded from a full checkpoint with
  ``torch.load`` (the tutorial used ``pretrained=True``; this machine cannot download);
- every parameter is frozen, the model's children and the (empty) params-to-learn list are printed;
- the 13 Conv2d are found by walking ``children()`` one level into Sequentials;
- conv1's 64 kernels (input channel 0) are drawn in an 8x8 grid (figsize 20x17);
- the photo goes through a DataLoader (``ToTensor``, no normalisation, batch of 1);
- the conv-only chain applies each conv to the previous conv's output (no BN, ReLU or pooling)
  and keeps all 13 results;
- each result's first 16 maps are drawn in a 4x4 grid on a 30x30-inch figure (3000x3000 px).

Usage: python benchmarks/tutorial.py --weights CKPT --image PHOTO --out DIR [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib
import torch
import torchvision
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

matplotlib.use("Agg")
import matplotlib.pyplot as plt


class OnePhoto(Dataset):
    """The tutorial's ``dogset``: one photo as a [0, 1] RGB tensor, no normalisation."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with Image.open(path) as img:
            size = img.size
        steps = [] if size == (224, 224) else [transforms.Resize((224, 224))]
        self.transform = transforms.Compose([*steps, transforms.ToTensor()])

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.path) as img:
            return self.transform(img.convert("RGB")), 0


def build_model(weights: Path, device: torch.device) -> nn.Module:
    model = torchvision.models.vgg16_bn(weights=None)
    model.load_state_dict(torch.load(weights))
    model = model.to(device)
    for param in model.parameters():
        param.requires_grad = False
    print("Params to learn:")
    for name, param in model.named_parameters():
        if param.requires_grad:
            print("\t", name)
    print(model.children)
    return model


def conv_layers_of(model: nn.Module) -> tuple[list[nn.Conv2d], list[torch.Tensor]]:
    """Walk the children one level into Sequentials, as the tutorial does."""
    convs: list[nn.Conv2d] = []
    weights: list[torch.Tensor] = []
    for child in model.children():
        if type(child) is nn.Conv2d:
            convs.append(child)
            weights.append(child.weight)
        elif type(child) is nn.Sequential:
            for grandchild in child:
                if type(grandchild) is nn.Conv2d:
                    convs.append(grandchild)
                    weights.append(grandchild.weight)
    print(f"Total convolutional layers: {len(convs)}")
    return convs, weights


def draw_filters(first_weights: torch.Tensor, out: Path) -> None:
    plt.figure(figsize=(20, 17))
    rows = len(first_weights) // 8
    for i, kernel in enumerate(first_weights):
        plt.subplot(rows, 8, i + 1)
        plt.imshow(kernel[0, :, :].detach().cpu(), cmap="gray")
        plt.axis("off")
    plt.savefig(out / "filter.png")
    plt.close()


def load_photo(path: Path, device: torch.device) -> torch.Tensor:
    photos = DataLoader(OnePhoto(path), batch_size=1, shuffle=False, num_workers=1)
    return next(iter(photos))[0].to(device)


def conv_chain(convs: list[nn.Conv2d], img: torch.Tensor) -> list[torch.Tensor]:
    """Each conv applied to the previous conv's output; all 13 results are kept."""
    results = [convs[0](img)]
    for conv in convs[1:]:
        results.append(conv(results[-1]))
    return results


def draw_feature_maps(results: list[torch.Tensor], out: Path) -> None:
    for num_layer, result in enumerate(results):
        fig = plt.figure(figsize=(30, 30))
        layer_viz = result[0, :, :, :].data
        print(layer_viz.size())
        fig.suptitle(str(layer_viz.size()), fontsize=36)
        for i, feature_map in enumerate(layer_viz):
            if i == 16:
                break
            plt.subplot(4, 4, i + 1)
            plt.imshow(feature_map.cpu(), cmap="gray")
            plt.axis("off")
        print(f"Saving layer {num_layer} feature maps...")
        plt.savefig(out / f"layer_{num_layer}.png")
        plt.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, required=True, help="full vgg16_bn state dict")
    parser.add_argument("--image", type=Path, required=True, help="photo to look at")
    parser.add_argument("--out", type=Path, required=True, help="folder for the PNGs")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    model = build_model(args.weights, device)
    convs, weights = conv_layers_of(model)
    draw_filters(weights[0], args.out)
    img = load_photo(args.image, device)
    results = conv_chain(convs, img)
    draw_feature_maps(results, args.out)


if __name__ == "__main__":
    main()
