"""HTTP plumbing of both services: serving with Hypercorn, JSON errors, bounded request reading."""
