"""Synthetic CT phantoms and the offline demo."""
