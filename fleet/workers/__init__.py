"""picofleet fleet serve --workers N: front worker processes, their link to the primary, the pool."""
