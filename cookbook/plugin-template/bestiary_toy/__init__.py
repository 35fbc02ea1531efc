"""A toy bestiary plugin: copy this folder to start your own."""
