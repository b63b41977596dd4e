"""Cameras, camera sampling and reference images."""
