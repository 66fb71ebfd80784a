"""Hydra configs of resexp, shipped inside the package as ``resexp.configs``."""
