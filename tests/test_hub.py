"""hubconf.py: torch.hub.load(repo, ..., source="local") from the repository itself, and
from a plain clone where unetkit is not installed. No network."""

import os
import subprocess
import sys
from pathlib import Path

import torch

from unetkit.checkpoint import build_model, save_checkpoint
from unetkit.config import Config, ModelConfig

REPO = Path(__file__).resolve().parent.parent


def hub_load(name, *args, **kwargs):
    return torch.hub.load(str(REPO), name, *args, source="local", **kwargs)


def test_the_entry_points_are_listed_with_their_shapes(monkeypatch):
    # torch.hub.list/help take only a GitHub name; point its download cache at this
    # checkout (what they find once a clone is cached), so nothing goes to the network.
    monkeypatch.setattr(torch.hub, "_get_cache_or_reload", lambda *args, **kwargs: str(REPO))
    assert sorted(torch.hub.list("owner/unetkit")) == ["from_checkpoint", "resnet_unet", "unet"]
    for name in ("unet", "resnet_unet", "from_checkpoint"):
        assert "Shapes: input (B, " in torch.hub.help("owner/unetkit", name)


def test_unet_and_resnet_unet_have_the_documented_shapes():
    from unetkit import ResNetUNet, UNet

    model = hub_load("unet", in_channels=1, out_channels=2)  # docs/api.md's call
    assert isinstance(model, UNet) and (model.in_channels, model.out_channels) == (1, 2)
    small = hub_load("unet", in_channels=1, out_channels=2, features=4, depth=2,
                     padding="same").eval()
    with torch.no_grad():
        assert small(torch.randn(2, 1, 36, 20)).shape == (2, 2, 36, 20)
    valid = hub_load("unet", in_channels=1, out_channels=1, features=4, depth=2).eval()
    with torch.no_grad():  # the paper's valid padding: the output is the input's centre
        assert valid(torch.randn(1, 1, 60, 60)).shape == (1, 1, *[valid.output_size(60)] * 2)
    resnet = hub_load("resnet_unet", num_classes=3, depth=18, in_channels=8).eval()
    assert isinstance(resnet, ResNetUNet)
    with torch.no_grad():
        assert resnet(torch.randn(1, 8, 40, 36)).shape == (1, 3, 40, 36)


def test_from_checkpoint_takes_a_run_folder_or_a_weight_file(tmp_path):
    cfg = Config(model=ModelConfig(features=4, depth=2))
    model = build_model(cfg.model).eval()
    best = tmp_path / "run" / "checkpoints" / "best"
    save_checkpoint(best, model, cfg)
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        for where in (tmp_path / "run", best / "model.safetensors"):
            loaded = hub_load("from_checkpoint", str(where))
            assert not loaded.training and torch.allclose(loaded(x), model(x))
        loaded = hub_load("from_checkpoint", path=str(best), device="cpu")
        assert torch.allclose(loaded(x), model(x))


def test_a_plain_clone_without_install_loads_from_src(tmp_path):
    # A fresh interpreter in which unetkit is NOT importable (no PYTHONPATH, the editable
    # install's path entry removed): hubconf must put the clone's src/ on the path itself.
    code = f"""
import sys, importlib.util
from pathlib import Path
sys.path = [p for p in sys.path if not (Path(p or ".") / "unetkit" / "__init__.py").exists()]
sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
assert importlib.util.find_spec("unetkit") is None, "unetkit still importable"
import torch
model = torch.hub.load({str(REPO)!r}, "unet", source="local", in_channels=1, out_channels=2,
                       features=4, depth=2)
import unetkit
assert Path(unetkit.__file__).resolve().is_relative_to(Path({str(REPO)!r}) / "src")
print(type(model).__name__, model.in_channels, model.out_channels)
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["UNet", "1", "2"]


def test_dependencies_name_every_package_the_entry_points_import():
    # torch.hub checks `dependencies` before loading: a package missing from the list
    # fails later with an ImportError from deep inside unetkit instead of its clear message.
    code = ("import sys; before = set(sys.modules); import hubconf; "
            "import unetkit.checkpoint, unetkit.models; "
            "print(' '.join(sorted({m.split('.')[0] for m in set(sys.modules) - before})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=120, check=True).stdout.split()
    import hubconf

    with_torch = {"torchgen", "typing_extensions"}  # installed with torch itself
    third_party = {m for m in out if m not in sys.stdlib_module_names and not m.startswith("_")}
    missing = third_party - set(hubconf.dependencies) - with_torch - {"unetkit", "hubconf"}
    assert not missing, missing
