"""The host side of the board protocols, over an open pyserial port."""
