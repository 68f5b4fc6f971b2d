"""The GCP provider (work in progress)."""
