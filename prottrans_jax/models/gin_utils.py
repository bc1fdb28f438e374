"""Building a model config from gin files alone, outside the trainer.

The trainer parses gin itself (`gin.parse_config_files_and_bindings`); this helper is for
tests, tools and the embedding command, which only need the model's config dataclass:

    config = config_from_gin(T5Config, ["gin/models/t5/xl.gin"], ["T5Config.dtype = 'float32'"])
"""

from __future__ import annotations

import os
from typing import Sequence, TypeVar

import gin

ConfigT = TypeVar("ConfigT")

# The repository root: gin files include each other by repo-relative path (gin/models/...).
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def add_search_paths(paths: Sequence[str]) -> None:
    """Adds gin include search paths once each (gin keeps a global list)."""
    from gin import config as gin_config

    for path in paths:
        if path not in gin_config._LOCATION_PREFIXES:  # pylint: disable=protected-access
            gin.add_config_file_search_path(path)


def config_from_gin(
    config_cls: type[ConfigT],
    gin_files: Sequence[str],
    bindings: Sequence[str] = (),
    search_paths: Sequence[str] = (),
    skip_unknown: bool = False,
) -> ConfigT:
    """Clears gin's global state, parses the files and bindings, and builds config_cls().

    skip_unknown=True ignores bindings of configurables that are not imported (useful for an
    operative config written by the trainer, when only the model config is wanted). Unknown
    parameters of a known configurable are always an error naming the parameter.
    """
    gin.clear_config()
    add_search_paths([REPO_ROOT, *search_paths])
    try:
        gin.parse_config_files_and_bindings(list(gin_files), list(bindings), skip_unknown=skip_unknown)
        return config_cls()
    finally:
        gin.clear_config()
