"""STAC inputs: an Item's assets as the layers of one raster, and a search's Items as inputs (pystac,
pystac-client: the ``stac`` extra).

An Item's assets are chosen by key (``assets``), else by the common names of their ``eo:bands`` matched to the
bands the model takes (``red,green,blue`` for three, ``red,green,blue,nir`` for four): one asset whose bands
carry those names in that order, else one single-band asset per name. Hrefs are taken as they are (signed
ones included: sign an Item before saving it, e.g. with ``planetary_computer.sign``, and pass the saved JSON).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from lemevit_geo.errors import InputError
from lemevit_geo.inputs import COMMON_NAMES, Layer, describe_layer, gdal_path


def _pystac() -> Any:
    try:
        import pystac
    except ImportError:  # pragma: no cover - the extra is installed in tests
        raise InputError("STAC inputs need pystac: pip install 'lemevit-geo[stac]'") from None
    return pystac


def read_item(href: str) -> Any:
    """The STAC Item at ``href`` (a file or URL), with read and format errors as one :class:`InputError`."""
    pystac = _pystac()
    try:
        obj = pystac.read_file(href)
    except Exception as exc:  # urllib, JSON and STAC errors alike: the line names the href
        raise InputError(f"{href}: cannot read a STAC Item: {_reason(exc)}") from exc
    if not isinstance(obj, pystac.Item):
        raise InputError(f"{href} is a STAC {type(obj).__name__}, not an Item: pass an Item, or search with `stac`")
    return obj


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "reason", None) or exc).splitlines()[0] if str(exc) else type(exc).__name__


def _common_names(asset: Any) -> list[str | None]:
    from pystac.extensions.eo import EOExtension

    if not EOExtension.has_extension(asset.owner) and "eo:bands" not in asset.extra_fields:
        return []
    return [band.common_name for band in EOExtension.ext(asset).bands or []]


def choose_assets(item: Any, keys: Sequence[str] | None, bands: int, where: str) -> list[tuple[str, Any]]:
    """The assets to stack, as ``(key, asset)``: by ``keys``, else by common names (see the module docstring)."""
    if keys:
        missing = [k for k in keys if k not in item.assets]
        if missing:
            raise InputError(f"{where} has no asset {', '.join(missing)} (it has {', '.join(item.assets)})")
        return [(k, item.assets[k]) for k in keys]
    names = list(COMMON_NAMES.get(bands, ()))
    named = {key: _common_names(asset) for key, asset in item.assets.items()}
    for key, common in named.items():
        if names and common == names:
            return [(key, item.assets[key])]
    single = {common[0]: key for key, common in named.items() if len(common) == 1 and common[0]}
    if names and all(n in single for n in names):
        return [(single[n], item.assets[single[n]]) for n in names]
    wanted = ",".join(names) or f"{bands} bands"
    raise InputError(
        f"{where}: no assets whose eo:bands common names are {wanted} (assets: {', '.join(item.assets)}); "
        "choose them with `assets`"
    )


def _nodata(asset: Any) -> float | None:
    from pystac.extensions.raster import RasterExtension

    if not RasterExtension.has_extension(asset.owner) and "raster:bands" not in asset.extra_fields:
        return None
    bands = RasterExtension.ext(asset).bands or []
    return bands[0].nodata if bands and bands[0].nodata is not None else None


def item_layers(href: str, keys: Sequence[str] | None, bands: int) -> list[Layer]:
    """The chosen assets of the Item at ``href`` as layers (each opened once), in band order."""
    item = read_item(href)
    where = f"STAC Item {item.id} ({href})"
    layers = []
    for key, asset in choose_assets(item, keys, bands, where):
        path = gdal_path(asset.get_absolute_href() or asset.href)
        layers.append(describe_layer(path, name=key, nodata=_nodata(asset)))
    return layers


def parse_datetime_range(text: str) -> tuple[datetime | None, datetime | None]:
    """A STAC ``datetime`` (``2024-06-01``, ``2024-06-01/2024-06-30``, ``../2024-06-30``) as its bounds (UTC)."""
    from pystac.utils import str_to_datetime

    def bound(part: str, end: bool) -> datetime | None:
        if part in ("", ".."):
            return None
        if len(part) == 10:  # a date: the whole day
            part += "T23:59:59.999999Z" if end else "T00:00:00Z"
        value = str_to_datetime(part)
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)

    try:
        start, _, stop = text.partition("/")
        return bound(start, False), bound(stop if _ else start, True)
    except ValueError as exc:
        raise InputError(f"`datetime` {text!r} is not a date or date range (2024-06-01/2024-06-30)") from exc
