"""ImageNet weights in torchvision's file layout: where to find them, and how to load them
into our own ResNet (including for inputs with other than 3 channels).

No network is needed at run time: put torchvision's file in torch.hub's checkpoint folder
(``$TORCH_HOME/hub/checkpoints``, by default ``~/.cache/torch/hub/checkpoints``) or pass
its path. Only when the file is missing is torch.hub's download tried, once, with a short
time-out.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
from torch import nn

#: torchvision's ImageNet (V1) weight file names, by ResNet depth.
TORCHVISION_FILES = {
    18: "resnet18-f37072fd.pth",
    34: "resnet34-b627a593.pth",
    50: "resnet50-0676ba61.pth",
    101: "resnet101-63fe2227.pth",
    152: "resnet152-394f9c45.pth",
}
_URL = "https://download.pytorch.org/models/"


def hub_checkpoint_dir() -> Path:
    """torch.hub's checkpoint folder (follows ``$TORCH_HOME``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_weights(depth: int, pretrained: bool | str | os.PathLike) -> Path:
    """The weight file for ``pretrained`` (True: torchvision's file for ``depth``; else a path).

    Raises FileNotFoundError naming the exact file and folder when it cannot be found or
    downloaded. Set ``UNETKIT_OFFLINE=1`` to skip the download attempt.
    """
    if pretrained is not True:
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"pretrained weight file not found: {path}")
        return path
    if depth not in TORCHVISION_FILES:
        raise ValueError(f"no ImageNet weights known for ResNet-{depth}")
    name = TORCHVISION_FILES[depth]
    folder = hub_checkpoint_dir()
    path = folder / name
    if path.is_file():
        return path
    reason = "download skipped (UNETKIT_OFFLINE is set)"
    if not os.environ.get("UNETKIT_OFFLINE"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            old = socket.getdefaulttimeout()
            socket.setdefaulttimeout(20)  # fail fast on machines without network
            try:
                # torchvision's names end in the first 8 hex digits of the file's SHA-256.
                digest = name.rsplit("-", 1)[1].split(".")[0]
                torch.hub.download_url_to_file(_URL + name, str(path), hash_prefix=digest,
                                               progress=True)
            finally:
                socket.setdefaulttimeout(old)
            return path
        except Exception as err:  # noqa: BLE001 - any failure means "not available"
            reason = f"download failed: {type(err).__name__}: {err}"
    raise FileNotFoundError(
        f"ImageNet weights for ResNet-{depth} not found: put torchvision's file {name} "
        f"in {folder} (or set TORCH_HOME, or pass pretrained='/path/to/{name}'); {reason}"
    )


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a weight file without executing pickled code (``weights_only=True``);
    ``.safetensors`` files are read with safetensors."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: cannot read weights: {err}") from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state_dict (name -> tensor), got {type(state)}")
    return state


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Turn a (64, 3, 7, 7) RGB stem kernel into one for ``in_channels`` channels.

    The RGB kernels are averaged into one grey kernel and repeated for every channel,
    scaled by 3 / in_channels, so an image whose channels all carry the same grey picture
    gives the same first activations as the grey picture in RGB. This keeps the learnt
    edge detectors instead of dropping them.
    """
    if weight.shape[1] == in_channels:
        return weight
    grey = weight.mean(dim=1, keepdim=True)
    return grey.repeat(1, in_channels, 1, 1) * (weight.shape[1] / in_channels)


def load_resnet_weights(resnet: nn.Module, path: str | os.PathLike) -> None:
    """Load torchvision-layout ResNet weights into ``resnet`` (strict, but ``fc.*`` is
    ignored and the stem is adapted to the model's input channels)."""
    state = read_state_dict(path)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    if "conv1.weight" in state:
        state["conv1.weight"] = adapt_first_conv(state["conv1.weight"], resnet.in_channels)
    own = {k for k in resnet.state_dict() if not k.startswith("fc.")}
    # Older files have no BatchNorm step counters; load_state_dict fills those in.
    missing = sorted(k for k in own - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - own)
    if missing or unexpected:
        raise ValueError(
            f"{path}: not a ResNet-{resnet.depth} weight file in torchvision's layout "
            f"(missing keys {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected keys {unexpected[:5]}{'...' if len(unexpected) > 5 else ''})"
        )
    for key, value in resnet.state_dict().items():
        if key in state and state[key].shape != value.shape:
            raise ValueError(
                f"{path}: {key} has shape {tuple(state[key].shape)}, "
                f"expected {tuple(value.shape)} for ResNet-{resnet.depth}"
            )
    resnet.load_state_dict(state, strict=False)  # every other key was checked above
