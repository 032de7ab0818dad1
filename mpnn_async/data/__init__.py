"""Datasets, loaders and the deterministic batch order shared by every trainer."""
