"""The search service: studies (search/study/), retrain-best (search/retrain/) and their commands."""

DEFAULT_STORAGE = "sqlite:///runs/studies.db"  # one file holds every study and its results
