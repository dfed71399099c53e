"""Reading the training scripts' configs (ml_collections ConfigDicts, namespaces or dicts)."""

from __future__ import annotations


def option(config, path: str, default):
    """config.a.b (ml_collections / namespaces / dicts), or default when absent."""
    node = config
    for part in path.split("."):
        if node is None:
            return default
        if isinstance(node, dict):
            node = node.get(part)
        else:
            node = getattr(node, part, None)
    return default if node is None else node
