"""The reference catalog: tracks cut into windows, embedded, and indexed for nearest-neighbour search.

`catalog` is the object everyone uses; `store` writes a catalog's files (generations, atomic commit, the
writer lock); `index` wraps FAISS; `nulls` keeps the audio calibration trusts; `sources` reads files,
folders and manifests; `parts` builds a catalog in parallel processes.
"""

from monitor.catalog.catalog import AddReport, Catalog, EmbeddedAudio
from monitor.catalog.sources import Source
from monitor.catalog.store import CatalogError, TrackInfo

__all__ = ["AddReport", "Catalog", "CatalogError", "EmbeddedAudio", "Source", "TrackInfo"]
