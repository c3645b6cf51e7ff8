"""Widgets shared by the views and screens."""
