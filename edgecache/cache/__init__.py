"""What to do for a request: local hit, revalidate, fetch once, or serve stale."""
