"""Firmware formats (UF2, iCE40 bitstreams), the asset cache and the reference board firmware."""
