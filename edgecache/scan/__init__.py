"""scan/: vulnerability scanning through Harbor's pluggable adapter API, reports, and the pull
gates (policies)."""
