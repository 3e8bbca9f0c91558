"""HTML map reports: one self-contained page per run (Leaflet inlined, overviews as PNG data URIs)."""
