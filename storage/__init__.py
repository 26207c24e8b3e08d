"""Persistence for canvashub. Only this package writes SQL."""
