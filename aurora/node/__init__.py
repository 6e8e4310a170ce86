"""The storage node: segment logs, page store, the sans-IO request core and its server."""
