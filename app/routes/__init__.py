"""HTTP routes of the NVC API, one module per concern."""
