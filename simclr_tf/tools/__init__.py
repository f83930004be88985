"""Small command-line programs; each is an absl app."""
