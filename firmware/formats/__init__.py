"""Firmware file formats: UF2, the image descriptor, iCE40 bitstreams (.bin and .asc)."""
