"""Container images, layer by layer, from every image store (see ``api`` for the entry point)."""
