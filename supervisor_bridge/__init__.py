"""balena Supervisor API client and update lock; arrives with the balena issue."""
