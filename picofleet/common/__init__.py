"""What the gateway and the fleet service both stand on: atomic files, the TinyDB store, HTTP plumbing."""
