"""pynsm: neural similarity-matching circuits and self-supervised clustering losses."""

__version__ = "2.0.0.dev0"
