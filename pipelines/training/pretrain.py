"""Self-supervised pretraining of a LeMeViT backbone on the user's unlabelled imagery.

``pretrain(images="scenes/*.tif", out="backbone.safetensors")`` draws random tiles from the images (any band
count, any number of scenes; torchgeo aligns their CRS and resolution), normalises them by per-band statistics
of random tiles, and trains a backbone with one of the objectives of :mod:`lemevit_geo.pipelines.training.ssl`. Memory
is bounded by the batch: tiles are read window by window. The run folder ``<out>.pretrain/`` holds the last
checkpoint (``--resume`` continues from it) and a CSV of per-epoch losses. The result loads into
``train --backbone-weights``.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import rasterio
import torch

from lemevit_geo import __version__
from lemevit_geo.bundle import check_safetensors_name
from lemevit_geo.choices import Arch, PretrainMethod
from lemevit_geo.errors import InputError, LemevitWarning
from lemevit_geo.outputs import check_output
from lemevit_geo.pipelines.training.datamodules import ImageDataModule
from lemevit_geo.pipelines.training.ssl import METHODS
from lemevit_geo.pipelines.training.train import make_trainer, run_folder
from lemevit_geo.pipelines.training.train_data import expand_paths, raster_dataset, training_stats
from lemevit_geo.raster import READ_ERRORS, read_error
from lemevit_geo.settings import Hardware, PretrainRecipe, check_tile_size
from lemevit_geo.weights import save_backbone

#: Tile side of pretraining unless given (capped to the images' extent).
DEFAULT_TILE = 128


def pretrain(
    *,
    images: Any,
    out: str | Path,
    method: PretrainMethod | str = PretrainMethod.simmim,
    arch: Arch | str = Arch.tiny,
    tile_size: int | None = None,
    recipe: PretrainRecipe = PretrainRecipe(),
    hardware: Hardware = Hardware(),
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    skip_unreadable: bool = False,
) -> dict[str, Any]:
    """Pretrain a backbone on ``images`` (paths or globs) with ``method`` and write it to ``out``; returns a
    summary (losses of the first and last epoch, normalisation, steps, seconds, images skipped). The images
    are checked before training (:func:`check_images`; ``skip_unreadable`` leaves unreadable ones out)."""
    start = time.perf_counter()
    out, method, arch = Path(out), PretrainMethod(method), Arch(arch)
    check_tile_size(tile_size)
    check_safetensors_name(out, "backbone")
    files, skipped = check_images(expand_paths(images, "image"), skip_unreadable)
    if not resume:
        check_output(out, overwrite, files)
    with run_folder(out, ".pretrain") as run_dir:
        L.seed_everything(recipe.seed, workers=True, verbose=False)
        dm = image_data(files, tile_size, recipe, hardware)
        module = ssl_module(method, arch, len(dm.mean), dm.tile_size, recipe)
        trainer, checkpoint, epochs = make_trainer(run_dir, None, recipe.epochs, hardware, progress=progress)
        last = run_dir / "checkpoints" / "last.ckpt"
        if resume and not last.is_file():
            raise InputError(f"`resume`: no checkpoint to continue from at {last}")
        trainer.fit(module, datamodule=dm, ckpt_path=str(last) if resume else None)
        config = {
            "arch": arch.value,
            "bands": len(dm.mean),
            "mean": [round(float(m), 4) for m in dm.mean],
            "std": [round(float(s), 4) for s in dm.std],
            "method": method.value,
            "tile_size": dm.tile_size,
            "images": files,
            "version": __version__,
        }
        if trainer.is_global_zero:
            save_backbone(out, module.backbone, config)
        losses = [r["train_loss"] for r in epochs.rows if "train_loss" in r]
        return {
            "backbone": str(out),
            **{k: v for k, v in config.items() if k != "images"},
            "images": len(files),
            "skipped_unreadable": skipped,
            "epochs": trainer.current_epoch,
            "global_steps": trainer.global_step,
            "loss_first_epoch": losses[0] if losses else None,
            "loss_last_epoch": losses[-1] if losses else None,
            "last_checkpoint": checkpoint.last_model_path or str(last),
            "metrics_csv": str(epochs.path),
            "seconds": round(time.perf_counter() - start, 1),
        }


def check_images(files: list[str], skip_unreadable: bool = False) -> tuple[list[str], list[str]]:
    """The images to pretrain on and those skipped: each must open and read its last block row (a truncated file
    fails there), and all must have the band count of the first. An unreadable image is refused, or with
    ``skip_unreadable`` skipped with a warning that lists it."""
    usable: list[str] = []
    skipped: list[str] = []
    first: tuple[str, int] | None = None
    for path in files:
        try:
            with rasterio.open(path) as src:
                src.read(window=((src.height - 1, src.height), (0, min(src.width, 256))))
                count, placed = src.count, src.crs is not None and not src.transform.is_identity
        except READ_ERRORS as exc:
            if not skip_unreadable:
                raise InputError(
                    f"{path} cannot be read as a raster ({read_error(exc)}): remove it from `images`, or pass "
                    "`skip_unreadable` to pretrain on the others"
                ) from exc
            skipped.append(path)
            continue
        if not placed:
            raise InputError(
                f"{path} has no CRS or geotransform: pretraining draws tiles by map position; give it one "
                "(gdal_edit.py -a_srs ... -a_ullr ...)"
            )
        if first is not None and count != first[1]:
            raise InputError(
                f"the images differ in band count: {first[0]} has {first[1]} bands, {path} has {count}; pretrain "
                "on images of one band count"
            )
        first = first or (path, count)
        usable.append(path)
    if not usable:
        raise InputError(f"none of the {len(files)} images can be read as a raster")
    if skipped:
        warnings.warn(f"skipped {len(skipped)} unreadable image(s): {', '.join(skipped)}", LemevitWarning, stacklevel=2)
    return usable, skipped


def image_data(files: list[str], tile_size: int | None, recipe: PretrainRecipe, hardware: Hardware) -> ImageDataModule:
    """Random tiles of the images with per-band statistics; the tile is ``DEFAULT_TILE`` capped to the extent."""
    dataset = raster_dataset(files, is_image=True)
    xs, ys, _ = dataset.bounds
    fits = int(min((xs.stop - xs.start) / dataset.res[0], (ys.stop - ys.start) / dataset.res[1]) + 1e-6) // 32 * 32
    tile = tile_size or min(DEFAULT_TILE, fits)
    if tile < 32 or tile > fits:
        span = int(min((xs.stop - xs.start) / dataset.res[0], (ys.stop - ys.start) / dataset.res[1]) + 1e-6)
        raise InputError(f"the images span {span} px at most, less than a tile of {max(tile, 32)} px")
    dm = ImageDataModule(
        dataset,
        tile_size=tile,
        batch_size=recipe.batch_size,
        num_workers=hardware.num_workers,
        length=recipe.steps_per_epoch * recipe.batch_size,
    )
    mean, std, _ = training_stats(dm, classes=0)
    dm.mean, dm.std = torch.tensor(mean), torch.tensor(std)
    return dm


def ssl_module(method: PretrainMethod, arch: Arch, bands: int, tile: int, recipe: PretrainRecipe) -> L.LightningModule:
    """The Lightning module of ``method`` on a LeMeViT of ``arch`` for ``bands``-band tiles."""
    common: dict[str, Any] = dict(
        arch=arch.value, in_channels=bands, lr=recipe.lr, weight_decay=recipe.weight_decay, warmup=recipe.warmup
    )
    if method == PretrainMethod.simmim:
        return METHODS[method.value](mask_ratio=recipe.mask_ratio, **common)
    return METHODS[method.value](size=tile, **common)
