"""Reusable torch blocks (Mamba, selective scan, ...)."""

from upsr.nn.mamba import BiMamba, Mamba
from upsr.nn.scan import selective_scan

__all__ = ["BiMamba", "Mamba", "selective_scan"]
