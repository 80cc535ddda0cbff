"""Reservations by researchers and the evaluation scheduler that counts their bitstreams on the boards."""
