"""The boards: one task per board, the device manager over all of them, flashing, the ENM record."""
