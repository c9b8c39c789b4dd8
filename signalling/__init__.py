"""The signalling hub and jalwa's composition root (signalling/app.py)."""
