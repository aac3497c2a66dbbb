"""Crack maps of full-size photos: windows, heatmaps, overlays, and scoring maps against masks."""
