"""git push to the fleet service: the real git http-backend and the pre-receive hook."""
