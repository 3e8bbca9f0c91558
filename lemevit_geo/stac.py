"""STAC inputs: an Item's assets as the layers of one raster, and a search's Items as inputs (pystac,
pystac-client: the ``stac`` extra).

An Item's assets are chosen by key (``assets``), else by the common names of their ``eo:bands`` matched to the
bands the model takes (``red,green,blue`` for three, ``red,green,blue,nir`` for four): one asset whose bands
carry those names in that order, else one single-band asset per name. Hrefs are taken as they are (signed
ones included: sign an Item before saving it, e.g. with ``planetary_computer.sign``, and pass the saved JSON).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

from lemevit_geo.errors import InputError
from lemevit_geo.inputs import COMMON_NAMES, Layer, describe_layer, gdal_path, sign_href


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
    """The cause of a failed read in a few words: the OS error a connection ended in (``Connection refused``),
    else the first line of the message."""
    text = str(getattr(exc, "reason", None) or exc)
    errno = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if errno:
        return errno.group(1).strip().rstrip(":")
    return text.splitlines()[0] if text else type(exc).__name__


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


def item_layers(href: str, keys: Sequence[str] | None, bands: int, sign: str | None = None) -> list[Layer]:
    """The chosen assets of the Item at ``href`` as layers (each opened once), in band order; their hrefs
    signed by ``sign`` (see :func:`~lemevit_geo.inputs.sign_href`)."""
    item = read_item(href)
    where = f"STAC Item {item.id} ({href})"
    layers = []
    for key, asset in choose_assets(item, keys, bands, where):
        path = gdal_path(sign_href(asset.get_absolute_href() or asset.href, sign))
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


#: Comparisons a ``query`` filter may use, as the STAC API query extension names them.
QUERY_OPS = {"<=": "lte", ">=": "gte", "!=": "neq", "<": "lt", ">": "gt", "=": "eq"}
QUERY = re.compile(r"^\s*([A-Za-z0-9_:.\-]+)\s*(<=|>=|!=|<|>|=)\s*(.+?)\s*$")


def parse_query(filters: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``eo:cloud_cover<10`` filters as the query extension's ``{"eo:cloud_cover": {"lt": 10}}``."""
    query: dict[str, dict[str, Any]] = {}
    for text in filters:
        match = QUERY.match(text)
        if not match:
            raise InputError(f"`query` {text!r} is not a filter such as eo:cloud_cover<10")
        name, op, value = match.groups()
        try:
            number: Any = float(value)
        except ValueError:
            number = value.strip("'\"")
        query.setdefault(name, {})[QUERY_OPS[op]] = number
    return query


def _keep(item: Any, query: dict[str, dict[str, Any]]) -> bool:
    """Whether ``item``'s properties pass ``query`` (a static catalogue is filtered here, an API filters)."""
    checks = {
        "lt": lambda a, b: a < b,
        "lte": lambda a, b: a <= b,
        "gt": lambda a, b: a > b,
        "gte": lambda a, b: a >= b,
        "eq": lambda a, b: a == b,
        "neq": lambda a, b: a != b,
    }
    for name, tests in query.items():
        value = item.properties.get(name)
        if value is None or not all(checks[op](value, want) for op, want in tests.items()):
            return False
    return True


@dataclass(frozen=True)
class Search:
    """One STAC search: the filters of the command's options and one term (an item id or a datetime)."""

    collections: tuple[str, ...] | None
    bbox: tuple[float, float, float, float] | None
    datetime: str | None
    query: dict[str, dict[str, Any]]
    ids: tuple[str, ...] | None = None

    def matches(self, item: Any) -> bool:
        """Whether a static catalogue's ``item`` passes the filters (an API applies them itself)."""
        if self.ids and item.id not in self.ids:
            return False
        if self.collections and item.collection_id not in self.collections:
            return False
        if self.bbox and item.bbox:
            b = item.bbox
            if b[0] > self.bbox[2] or b[2] < self.bbox[0] or b[1] > self.bbox[3] or b[3] < self.bbox[1]:
                return False
        if self.datetime:
            start, stop = parse_datetime_range(self.datetime)
            when = item.datetime or item.common_metadata.start_datetime
            if when is None or (start and when < start) or (stop and when > stop):
                return False
        return _keep(item, self.query)


def _is_datetime(term: str) -> bool:
    return bool(re.match(r"^(\d{4}-\d\d-\d\d|\.\.)", term))


def _lonlat_bbox(sources: Any) -> tuple[float, float, float, float] | None:
    if sources.bbox is None:
        return None
    from rasterio.warp import transform_bounds

    from lemevit_geo.inputs import check_bbox

    bbox = check_bbox(sources.bbox)
    if sources.bbox_crs.upper() in ("EPSG:4326", "OGC:CRS84"):
        return bbox
    return tuple(transform_bounds(sources.bbox_crs, "EPSG:4326", *bbox, densify_pts=21))  # type: ignore[return-value]


def open_catalogue(url: str) -> Any:
    """The STAC API or static catalogue at ``url`` (pystac-client), with failures as one :class:`InputError`."""
    try:
        from pystac_client import Client
    except ImportError:  # pragma: no cover - the extra is installed in tests
        raise InputError("STAC search needs pystac-client: pip install 'lemevit-geo[stac]'") from None
    try:
        with warnings.catch_warnings():  # a static catalogue conforms to nothing: walked below, as intended
            warnings.simplefilter("ignore")
            return Client.open(url)
    except Exception as exc:  # requests, pystac-client's APIError, JSON errors: one line naming the catalogue
        raise InputError(f"STAC catalogue {url} cannot be opened: {_reason(exc)}") from exc


def find_items(client: Any, search: Search, url: str) -> list[Any]:
    """The Items ``search`` finds in ``client``: through the API's item search, else by walking the catalogue."""
    from pystac_client import ConformanceClasses

    try:
        if client.conforms_to(ConformanceClasses.ITEM_SEARCH):
            found = client.search(
                collections=list(search.collections) if search.collections else None,
                bbox=search.bbox,
                datetime=search.datetime,
                query=search.query or None,
                ids=list(search.ids) if search.ids else None,
            )
            items = list(found.items())
        else:
            with warnings.catch_warnings():  # pystac-client's "falling back to pystac": the walk is the point
                warnings.simplefilter("ignore")
                items = [item for item in client.get_items(recursive=True) if search.matches(item)]
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"STAC search of {url} failed: {_reason(exc)}") from exc
    return sorted(items, key=lambda i: (i.datetime or datetime.min.replace(tzinfo=timezone.utc), i.id))


def _href(item: Any, url: str) -> str:
    href = item.get_self_href()
    if not href:
        raise InputError(f"STAC item {item.id} from {url} has no self link to read it by; save the items first")
    return href


def search_inputs(sources: Any, terms: Sequence[str], count: int | None = None) -> list[str]:
    """The Items a search finds, as inputs (their hrefs): one search with the options' filters, or one per term
    (an item id or a datetime range). With ``count`` (``change``: 2) each term must find exactly one Item."""
    url = str(sources.stac)
    client = open_catalogue(url)
    base = Search(
        tuple(sources.collection) if sources.collection else None,
        _lonlat_bbox(sources),
        sources.datetime,
        parse_query(sources.query or ()),
    )
    searches = [base]
    if terms:
        searches = [
            replace(base, datetime=t) if _is_datetime(t) else replace(base, ids=(t,), datetime=None) for t in terms
        ]
    hrefs: list[str] = []
    for term, search in zip(terms or ["the search"], searches, strict=True):
        items = find_items(client, search, url)
        if not items or (count and len(items) != 1):
            found = ", ".join(i.id for i in items[:5]) or "none"
            raise InputError(
                f"STAC search of {url} for {term} found {len(items)} items ({found}); "
                + ("narrow it with `bbox`, `datetime`, `query` or an item id" if items else "widen it")
            )
        hrefs.extend(_href(item, url) for item in items)
    return hrefs
